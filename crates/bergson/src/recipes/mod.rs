//! Recipes: Bergson's multi-step attribution pipelines as one command each, every step a
//! sub-directory of the run path built by the library's own commands (build, hessian, score)
//! and resumable step by step.
//!
//! - [`ekfac`]: Hessian-preconditioned influence (K-FAC / EK-FAC factors applied to the query).
//! - [`lissa`]: influence with LiSSA's stochastic damped Gauss-Newton inverse.

pub mod ekfac;
pub mod lissa;
