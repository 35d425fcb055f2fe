//! numpy's `default_rng(seed).permutation(n)`, bit for bit: the order Hugging Face's
//! `Dataset.shuffle(seed=seed)` puts rows in (`datasets` draws `np.random.default_rng(seed)`
//! and takes `generator.permutation(len(self))`). Python Bergson's trainer shuffles each epoch
//! this way with seed `seed + epoch`.
//!
//! Three pieces, each as numpy 2 implements it:
//! - `SeedSequence(seed)` (`numpy/random/bit_generator.pyx`): the seed's 32-bit words mixed
//!   into a pool of four words with `hashmix`/`mix`, then `generate_state(4, uint64)`.
//! - `PCG64` (`numpy/random/src/pcg64`): O'Neill's 128-bit LCG with the XSL-RR output,
//!   seeded by `pcg_setseq_128_srandom_r`; 32-bit draws split one 64-bit draw, low half first.
//! - `Generator.shuffle` of a 1-D array (`_shuffle_raw`): Fisher-Yates from the last element
//!   down to index 1, each `j` from `random_interval(i)` (masked rejection sampling).

/// numpy's PCG64 multiplier (`PCG_DEFAULT_MULTIPLIER_128`).
const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> XSHIFT)
}

/// `SeedSequence(seed).generate_state(n_words, np.uint64)` for a non-negative int seed.
pub fn seed_sequence_u64(seed: u64, n_words: usize) -> Vec<u64> {
    // The entropy as little-endian 32-bit words; 0 is one zero word.
    let mut entropy = vec![seed as u32];
    if seed >> 32 != 0 {
        entropy.push((seed >> 32) as u32);
    }
    let mut pool = [0u32; POOL_SIZE];
    let mut hash_const = INIT_A;
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const);
    }
    for i_src in 0..POOL_SIZE {
        for i_dst in 0..POOL_SIZE {
            if i_src != i_dst {
                let h = hashmix(pool[i_src], &mut hash_const);
                pool[i_dst] = mix(pool[i_dst], h);
            }
        }
    }
    for &word in entropy.iter().skip(POOL_SIZE) {
        for slot in pool.iter_mut() {
            let h = hashmix(word, &mut hash_const);
            *slot = mix(*slot, h);
        }
    }
    let mut hash_const = INIT_B;
    let words: Vec<u32> = (0..2 * n_words)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect();
    words
        .chunks(2)
        .map(|w| u64::from(w[0]) | (u64::from(w[1]) << 32))
        .collect()
}

/// numpy's `PCG64` bit generator.
#[derive(Debug, Clone)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    /// The high half of the last 64-bit draw, kept for the next 32-bit draw.
    buffered_u32: Option<u32>,
}

impl Pcg64 {
    /// `PCG64(seed)`, i.e. the generator of `np.random.default_rng(seed)`.
    pub fn new(seed: u64) -> Self {
        let s = seed_sequence_u64(seed, 4);
        let initstate = (u128::from(s[0]) << 64) | u128::from(s[1]);
        let initseq = (u128::from(s[2]) << 64) | u128::from(s[3]);
        let mut rng = Self {
            state: 0,
            inc: (initseq << 1) | 1,
            buffered_u32: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// The next 64-bit output (advance, then XSL-RR of the new state).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let hi = (self.state >> 64) as u64;
        let lo = self.state as u64;
        (hi ^ lo).rotate_right((hi >> 58) as u32)
    }

    /// The next 32-bit output: the low half of a fresh 64-bit draw, then its high half.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.buffered_u32.take() {
            return v;
        }
        let next = self.next_u64();
        self.buffered_u32 = Some((next >> 32) as u32);
        next as u32
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection.
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= u64::from(u32::MAX) {
            loop {
                let v = u64::from(self.next_u32()) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `np.random.default_rng(seed).permutation(n)`: the row order of
/// `datasets.Dataset.shuffle(seed=seed)` on `n` rows.
pub fn permutation(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = Pcg64::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed numpy outputs (tests/fixtures/scripts/make_nprandom_refs.py).
    #[test]
    fn matches_numpy() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/nprandom/permutations.json"
        );
        let refs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = refs["permutations"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let seed = case["seed"].as_u64().unwrap();
            let n = case["n"].as_u64().unwrap() as usize;
            let want: Vec<usize> = case["perm"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(permutation(seed, n), want, "seed {seed}, n {n}");
        }
        for case in refs["raw"].as_array().unwrap() {
            let seed = case["seed"].as_u64().unwrap();
            let mut rng = Pcg64::new(seed);
            for v in case["u64"].as_array().unwrap() {
                assert_eq!(rng.next_u64(), v.as_u64().unwrap(), "seed {seed}");
            }
        }
    }
}
