//! Random projection matrices, bit-identical to Bergson 2.5.1's (`PROJECTION_VERSION = 2`).
//!
//! Entries come from Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
//! 3", 2011), a counter-based generator: entry `(row, c)` is a function of the counter
//! `(w, row, 0, 0)` and a key derived from the matrix's identifier (MD5 of e.g.
//! `"layers.0.mlp.dense_h_to_4h/left/seed3"`), so the same identifier gives the same matrix on
//! any device, and `A[:k, :l]` is the `[k, l]` matrix with the same identifier.
//!
//! * Rademacher: column `c` is bit `c % 128` of Philox output `c / 128` (little-endian across
//!   the four 32-bit words), `+1` if set else `-1`.
//! * Normal: column `c` is entry `c % 4` of output `c / 4`, by Box-Muller on the word pairs
//!   `(x0, x1)` and `(x2, x3)`, in float32: `r·cos t` for even columns and `r·sin t` for odd ones.

use md5::{Digest, Md5};
use tch::{Device, Kind, Tensor};

use crate::config::{ProjectionScale, ProjectionType};
use crate::Result;

const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

/// Philox4x32 with 10 rounds on `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut x0, mut x1, mut x2, mut x3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(PHILOX_W[0]);
            k1 = k1.wrapping_add(PHILOX_W[1]);
        }
        let p0 = u64::from(PHILOX_M[0]) * u64::from(x0);
        let p1 = u64::from(PHILOX_M[1]) * u64::from(x2);
        (x0, x1, x2, x3) = (
            (p1 >> 32) as u32 ^ x1 ^ k0,
            p1 as u32,
            (p0 >> 32) as u32 ^ x3 ^ k1,
            p0 as u32,
        );
    }
    [x0, x1, x2, x3]
}

/// The Philox key of a matrix: the first two little-endian words of the identifier's MD5.
pub fn philox_key(identifier: &str) -> [u32; 2] {
    let digest = Md5::digest(identifier.as_bytes());
    let word =
        |i: usize| u32::from_le_bytes([digest[i], digest[i + 1], digest[i + 2], digest[i + 3]]);
    [word(0), word(4)]
}

/// Bergson's identifier of a module's projection matrix: `"<name>/<role>[/seed<k>]"`.
pub fn projection_identifier(name: &str, role: &str, seed: Option<i64>) -> String {
    match seed {
        Some(s) => format!("{name}/{role}/seed{s}"),
        None => format!("{name}/{role}"),
    }
}

/// The unscaled `[m, n]` matrix named `identifier`, as float32 values in row-major order.
pub fn random_matrix_values(
    identifier: &str,
    m: usize,
    n: usize,
    kind: ProjectionType,
) -> Vec<f32> {
    let key = philox_key(identifier);
    let mut out = Vec::with_capacity(m * n);
    for row in 0..m {
        let row32 = row as u32;
        match kind {
            ProjectionType::Rademacher => {
                let mut c = 0;
                while c < n {
                    let x = philox4x32_10([(c >> 7) as u32, row32, 0, 0], key);
                    let block_end = n.min((c | 127) + 1);
                    for col in c..block_end {
                        let b = col & 127;
                        let bit = (x[b >> 5] >> (b & 31)) & 1;
                        out.push(if bit == 1 { 1.0 } else { -1.0 });
                    }
                    c = block_end;
                }
            }
            ProjectionType::Normal => {
                let mut c = 0;
                while c < n {
                    let x = philox4x32_10([(c >> 2) as u32, row32, 0, 0], key);
                    let z = box_muller(x);
                    let block_end = n.min((c | 3) + 1);
                    for col in c..block_end {
                        out.push(z[col & 3]);
                    }
                    c = block_end;
                }
            }
        }
    }
    out
}

/// Four standard normals from one Philox output, in float32 as Bergson's NumPy path computes
/// them: `u1 = (f32(a) + 0.5) * 2^-32`, `u2 = f32(b) * 2^-32`, `r = sqrt(-2 ln u1)`, `t = 2π u2`.
fn box_muller(x: [u32; 4]) -> [f32; 4] {
    const TWO_POW_M32: f32 = 2.328_306_4e-10; // 2^-32, exact in f32
    let pair = |a: u32, b: u32| {
        let u1 = (a as f32 + 0.5) * TWO_POW_M32;
        let u2 = b as f32 * TWO_POW_M32;
        let r = (-2.0f32 * u1.ln()).sqrt();
        let t = std::f32::consts::TAU * u2;
        (r * t.cos(), r * t.sin())
    };
    let (z0, z1) = pair(x[0], x[1]);
    let (z2, z3) = pair(x[2], x[3]);
    [z0, z1, z2, z3]
}

/// Bergson's `create_projection_matrix`: the `[m, n]` matrix named `identifier`, generated in
/// float32, cast to `dtype`, then scaled in `dtype` (`jl`: divided by `sqrt(m)`; `row_norm`:
/// each row divided by its L2 norm).
pub fn projection_matrix(
    identifier: &str,
    m: usize,
    n: usize,
    kind: ProjectionType,
    scale: ProjectionScale,
    dtype: Kind,
    device: Device,
) -> Result<Tensor> {
    let values = random_matrix_values(identifier, m, n, kind);
    let a = Tensor::f_from_slice(&values)?
        .f_reshape([m as i64, n as i64])?
        .f_to_device(device)?
        .f_to_kind(dtype)?;
    Ok(match scale {
        ProjectionScale::Jl => a.f_div_scalar((m as f64).sqrt())?,
        ProjectionScale::RowNorm => {
            let norms = a.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?;
            a.f_div(&norms)?
        }
    })
}

/// Bergson's module projection matrix: [`projection_matrix`] of
/// [`projection_identifier`]`(name, role, seed)`.
#[allow(clippy::too_many_arguments)]
pub fn module_projection_matrix(
    name: &str,
    role: &str,
    m: usize,
    n: usize,
    kind: ProjectionType,
    scale: ProjectionScale,
    seed: Option<i64>,
    dtype: Kind,
    device: Device,
) -> Result<Tensor> {
    projection_matrix(
        &projection_identifier(name, role, seed),
        m,
        n,
        kind,
        scale,
        dtype,
        device,
    )
}

/// Columns per block of a global projection matrix (Bergson's
/// `CHUNKED_PROJECTION_INSTANTIATION_NUMEL // m`): block `b` starting at column `s` is its own
/// matrix named `"<identifier>/<s>"`.
pub fn global_block_columns(m: usize) -> usize {
    ((1usize << 27) / m).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signs(v: &[f32]) -> String {
        v.iter().map(|&x| if x > 0.0 { '+' } else { '-' }).collect()
    }

    // Test vectors from Bergson 2.5.1 (research/bergson.md §4.5).
    #[test]
    fn md5_keys_match_bergson() {
        assert_eq!(
            philox_key("layers.0.attention.query_key_value/left"),
            [1819291705, 884212438]
        );
        assert_eq!(
            philox_key("layers.0.attention.query_key_value/right"),
            [662000488, 2138356282]
        );
        assert_eq!(
            philox_key("h.0.attn.c_attn/right/seed7"),
            [77551528, 2677601096]
        );
    }

    #[test]
    fn rademacher_rows_match_bergson() {
        let cases = [
            (
                "layers.0.attention.query_key_value/left",
                "++-++++-",
                "-++++---",
            ),
            (
                "layers.0.attention.query_key_value/right",
                "-++-+-+-",
                "+-+--+-+",
            ),
            ("h.0.attn.c_attn/right/seed7", "--+--+++", "--+-+--+"),
        ];
        for (id, row0, row1) in cases {
            let a = random_matrix_values(id, 2, 8, ProjectionType::Rademacher);
            assert_eq!(signs(&a[..8]), row0, "{id} row 0");
            assert_eq!(signs(&a[8..]), row1, "{id} row 1");
        }
    }

    #[test]
    fn normal_rows_match_bergson() {
        let a = random_matrix_values(
            "layers.0.attention.query_key_value/left",
            2,
            5,
            ProjectionType::Normal,
        );
        let want: [f64; 10] = [
            -0.21718648,
            -0.96963781,
            0.23807707,
            -1.14792097,
            -0.34979630,
            -0.06745258,
            1.10589373,
            -1.09002745,
            0.15436791,
            0.54429930,
        ];
        for (got, want) in a.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() <= 1e-7, "{got} vs {want}");
        }
        let b = random_matrix_values(
            "layers.0.attention.query_key_value/right",
            1,
            4,
            ProjectionType::Normal,
        );
        for (got, want) in b
            .iter()
            .zip([0.40620598f64, -0.47172987, 0.98230892, 0.41904455])
        {
            assert!((f64::from(*got) - want).abs() <= 1e-7, "{got} vs {want}");
        }
    }

    #[test]
    fn prefix_property_holds() {
        for kind in [ProjectionType::Rademacher, ProjectionType::Normal] {
            let big = random_matrix_values("x/left", 5, 300, kind);
            let small = random_matrix_values("x/left", 3, 130, kind);
            for r in 0..3 {
                assert_eq!(&big[r * 300..r * 300 + 130], &small[r * 130..(r + 1) * 130]);
            }
        }
    }

    #[test]
    fn scaled_jl_matrix_matches_bergson() {
        let a = module_projection_matrix(
            "layers.0.mlp.dense_h_to_4h",
            "left",
            4,
            32,
            ProjectionType::Rademacher,
            ProjectionScale::Jl,
            None,
            Kind::Float,
            Device::Cpu,
        )
        .unwrap();
        let row0: Vec<f32> = a.get(0).narrow(0, 0, 8).try_into().unwrap();
        assert_eq!(row0, [0.5, -0.5, 0.5, -0.5, -0.5, 0.5, -0.5, 0.5]);
    }
}
