//! Flag parsing shared by every config: Bergson's (simple_parsing's) boolean spelling, and
//! defaults taken from the clap definitions so they are written once.

use clap::{Args, Command, FromArgMatches};

/// Parses a boolean as simple_parsing does: `true/false`, `yes/no`, `t/f`, `y/n`, `1/0`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" | "on" => Ok(true),
        "false" | "f" | "no" | "n" | "0" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean: use true or false")),
    }
}

/// The value of `T` when no flag is given: clap's defaults are the one place defaults live.
pub fn clap_default<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(Command::new("defaults").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(Vec::<String>::new())
        .unwrap_or_else(|e| unreachable!("config defaults must parse from no flags: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| unreachable!("config defaults: {e}"))
}

/// Moves `key` out of a run-file mapping into `into` (left as it is when absent); a value of
/// the wrong type is an error naming the key.
pub(crate) fn take_key<T: serde::de::DeserializeOwned>(
    map: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    into: &mut T,
) -> Result<(), String> {
    if let Some(v) = map.remove(key) {
        *into = serde_json::from_value(v).map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_parse_like_simple_parsing() {
        for t in ["true", "True", "YES", "1", "t"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["false", "No", "0", "F"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }
}
