//! Recipes: published attribution methods run as one command, each a pipeline of the
//! subcommands (hessian, mix, build, score) with its steps as sub-directories of one run path.

pub mod trackstar;
