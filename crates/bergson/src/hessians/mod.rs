//! Hessians and preconditioning: inverting a fitted Hessian ([`inversion`]) and applying the
//! inverse to gradients ([`preconditioner`]).

pub mod inversion;
pub mod preconditioner;
