//! Recipes: multi-step attribution pipelines that chain the commands (`hessian`, `build`,
//! `score`) into one method, each resumable step by step as Bergson 2.5.1's `cli/` recipes are.

pub mod trak;
