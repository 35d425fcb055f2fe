//! Recipes: published attribution methods run as one command each, every step a sub-directory
//! of the run path built by the library's own commands (`hessian`, `mix`, `build`, `score`),
//! resumable step by step as Bergson 2.5.1's recipes are.
//!
//! - [`ekfac`]: Hessian-preconditioned influence (K-FAC / EK-FAC factors applied to the query,
//!   optionally refined by ASTRA).
//! - [`lissa`]: influence with LiSSA's stochastic damped Gauss-Newton inverse.
//! - [`trackstar`]: TrackStar (mixed autocorrelation Hessians, preconditioned cosine scores).
//! - [`trak`]: TRAK (joint Gram, TRAK weights, checkpoint ensembles).

pub mod ekfac;
pub mod lissa;
pub mod trackstar;
pub mod trak;
