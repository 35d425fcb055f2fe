//! The random document draws of the diagnosis, replaying Python's `random.Random(seed)` so a
//! run draws the same documents Bergson's does for the same seed and document list.

use crate::data::pyrandom::PyRandom;

/// `random.Random(seed).sample(range(n), 2)` for each trial: pairs of distinct indices.
pub fn sample_pairs(n: usize, trials: usize, seed: i64) -> Vec<(usize, usize)> {
    let mut rng = PyRandom::new(i128::from(seed));
    (0..trials).map(|_| sample_two(&mut rng, n)).collect()
}

/// One `rng.sample(range(n), 2)` (n >= 2), following CPython's two branches: a shrinking pool
/// for small populations (n <= 21 when k = 2), else rejection of repeats.
fn sample_two(rng: &mut PyRandom, n: usize) -> (usize, usize) {
    if n <= 21 {
        let mut pool: Vec<usize> = (0..n).collect();
        let mut out = [0usize; 2];
        for (i, slot) in out.iter_mut().enumerate() {
            let j = rng.randbelow((n - i) as u64) as usize;
            *slot = pool[j];
            pool[j] = pool[n - i - 1];
        }
        (out[0], out[1])
    } else {
        let a = rng.randbelow(n as u64) as usize;
        let mut b = rng.randbelow(n as u64) as usize;
        while b == a {
            b = rng.randbelow(n as u64) as usize;
        }
        (a, b)
    }
}

/// The equal-length trials' draws: for each trial a document index (`rng.randrange(n)`) and
/// random token ids of that document's length (`rng.randrange(vocab)` each), from one
/// `random.Random(seed)` stream as Bergson draws them.
pub fn equal_length_draws(
    lengths: &[usize],
    vocab: u64,
    trials: usize,
    seed: i64,
) -> Vec<(usize, Vec<i64>)> {
    let mut rng = PyRandom::new(i128::from(seed));
    (0..trials)
        .map(|_| {
            let doc = rng.randbelow(lengths.len() as u64) as usize;
            let ids = (0..lengths[doc])
                .map(|_| rng.randbelow(vocab) as i64)
                .collect();
            (doc, ids)
        })
        .collect()
}
