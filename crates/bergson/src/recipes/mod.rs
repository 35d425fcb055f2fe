//! Recipes: published attribution methods run as one command each, every step a sub-directory
//! of the run path built by the library's own commands (`hessian`, `mix`, `build`, `score`),
//! resumable step by step as Bergson 2.5.1's recipes are.
//!
//! - [`approx_unrolling`]: SOURCE (approximate unrolled differentiation over a training
//!   trajectory's checkpoints, segment by segment).
//! - [`ekfac`]: Hessian-preconditioned influence (K-FAC / EK-FAC factors applied to the query,
//!   optionally refined by ASTRA).
//! - [`lissa`]: influence with LiSSA's stochastic damped Gauss-Newton inverse.
//! - [`trackstar`]: TrackStar (mixed autocorrelation Hessians, preconditioned cosine scores).
//! - [`trak`]: TRAK (joint Gram, TRAK weights, checkpoint ensembles).

pub mod approx_unrolling;
pub mod ekfac;
pub mod lissa;
pub mod trackstar;
pub mod trak;

/// The closing line of a recipe run: where the scores are and the time of each step run
/// (`(step, seconds)`; none when every step was resumed).
fn write_summary(
    f: &mut std::fmt::Formatter<'_>,
    scores: &std::path::Path,
    timings: &[(&'static str, f64)],
) -> std::fmt::Result {
    let total: f64 = timings.iter().map(|(_, s)| s).sum();
    let steps: Vec<String> = timings
        .iter()
        .map(|(n, s)| format!("{n} {s:.1} s"))
        .collect();
    let steps = if steps.is_empty() {
        "every step resumed".to_string()
    } else {
        steps.join(", ")
    };
    write!(
        f,
        "scores saved at {} ({steps}; total {total:.1} s)",
        scores.display()
    )
}
