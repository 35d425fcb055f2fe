//! One config struct flattened twice into a command under other flag names.
//!
//! Bergson's pipelines hold the same dataclass more than once (a `DataConfig` for the training
//! data, the query and the contrast set; an `InversionConfig` for the query preprocessing and
//! for the pipeline), and simple_parsing tells them apart by prefixing the clashing flags
//! (`--query.dataset`, `--hessian_pipeline_cfg.inversion_cfg.inversion`). clap keys arguments
//! by id, so a struct cannot simply be flattened twice: [`augment_renamed`] adds a copy of its
//! arguments under new ids and flags, and [`from_renamed`] parses the struct back from the flags
//! given under those names, through the struct's own parser (so its defaults and value parsers
//! are the single source).

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};

/// A `'static` copy of `s`. clap (without its `string` feature) names arguments with static
/// strings; a command is built once per process, so the few renamed names live as long as it.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// `T`'s own arguments (its definition, outside any command).
fn own_args<T: Args>() -> Command {
    T::augment_args(Command::new("renamed").no_binary_name(true))
}

/// Adds `T`'s arguments to `cmd` with ids `<tag>.<id>` and each long flag renamed by `long`.
pub(crate) fn augment_renamed<T: Args>(
    cmd: Command,
    tag: &str,
    long: impl Fn(&str) -> String,
) -> Command {
    let mut cmd = cmd;
    for arg in own_args::<T>().get_arguments() {
        let mut renamed = arg
            .clone()
            .id(leak(format!("{tag}.{}", arg.get_id().as_str())));
        if let Some(l) = arg.get_long() {
            renamed = renamed.long(leak(long(l)));
        }
        cmd = cmd.arg(renamed);
    }
    cmd
}

/// Renames the long flags of `T`'s arguments already in `cmd` (ids unchanged) to `prefix` +
/// their name, as simple_parsing prefixes the flags of a nested dataclass that clash.
pub(crate) fn prefix_longs<T: Args>(cmd: Command, prefix: &str) -> Command {
    let mut cmd = cmd;
    for arg in own_args::<T>().get_arguments() {
        if let Some(l) = arg.get_long() {
            let long = leak(format!("{prefix}{l}"));
            cmd = cmd.mut_arg(arg.get_id().as_str(), |a| a.long(long));
        }
    }
    cmd
}

/// `T` from the flags given under [`augment_renamed`]`(tag)`'s names (defaults for the rest),
/// and whether any of them was given on the command line.
pub(crate) fn from_renamed<T: Args + FromArgMatches>(
    m: &ArgMatches,
    tag: &str,
) -> Result<(T, bool), clap::Error> {
    let own = own_args::<T>();
    let mut argv: Vec<OsString> = Vec::new();
    let mut given = false;
    for arg in own.get_arguments() {
        let id = format!("{tag}.{}", arg.get_id().as_str());
        if m.value_source(&id) != Some(ValueSource::CommandLine) {
            continue;
        }
        given = true;
        let flag = match arg.get_long() {
            Some(l) => format!("--{l}"),
            None => continue,
        };
        let values: Vec<OsString> = m
            .get_raw(&id)
            .map(|v| v.map(OsString::from).collect())
            .unwrap_or_default();
        argv.push(flag.into());
        argv.extend(values);
    }
    let matches = own.try_get_matches_from(argv)?;
    Ok((T::from_arg_matches(&matches)?, given))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataConfig;

    #[test]
    fn a_struct_flattened_twice_parses_each_copy_from_its_own_flags() {
        let cmd = Command::new("t").no_binary_name(true);
        let cmd = augment_renamed::<DataConfig>(cmd, "query", |l| format!("query.{l}"));
        let cmd = augment_renamed::<DataConfig>(cmd, "contrast", |l| format!("contrast.{l}"));
        let m = cmd
            .try_get_matches_from([
                "--query.dataset",
                "q.jsonl",
                "--query.truncation",
                "--query.chunk_length",
                "7",
            ])
            .unwrap();
        let (q, given) = from_renamed::<DataConfig>(&m, "query").unwrap();
        assert!(given);
        assert_eq!(q.dataset, "q.jsonl");
        assert!(q.truncation);
        assert_eq!(q.chunk_length, 7);
        assert_eq!(q.split, "train");
        let (c, given) = from_renamed::<DataConfig>(&m, "contrast").unwrap();
        assert!(!given);
        assert_eq!(c, DataConfig::default());
    }
}
