//! Recipes: published attribution methods run as one command, each a pipeline of the
//! subcommands (`hessian`, `mix`, `build`, `score`) with its steps as sub-directories of one run
//! path, resumable step by step as Bergson 2.5.1's `cli/` recipes are.

pub mod trackstar;
pub mod trak;
