//! Error rendering: one line on stderr and an exit status: 2 for the user's mistakes, 130 for
//! Ctrl-C, 3 for a process of a multi-process job stopped by another's failure, 1 for
//! everything else (internal errors, libtorch failures).

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Exit status of a run the user interrupted (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;
/// Exit status of a user mistake (a flag, a file, a dataset): clap's status for bad arguments.
const USER_ERROR: u8 = 2;
/// Exit status of one process of a multi-process job stopped by another's failure.
const PEER_FAILED: u8 = bergson::dist::launch::PEER_FAILED_STATUS as u8;
/// Exit status of everything else: internal errors, libtorch failures, unexpected I/O.
const FAILURE: u8 = 1;

/// Prints an error as one line and returns its exit status.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    let (msg, code) = render(&err);
    if !reported_elsewhere(&err) {
        eprintln!("error: {msg}");
    }
    ExitCode::from(code)
}

/// Failures of a multi-process job that another process reports in one line: a worker of
/// our launcher stopped by another rank's failure (the launcher names it) or by Ctrl-C (which
/// reached every worker: the launcher says it once), and the launcher's own report of a worker
/// that exited with a user error (the worker printed it).
fn reported_elsewhere(err: &anyhow::Error) -> bool {
    use bergson::dist::DistError;
    match err.downcast_ref::<bergson::Error>() {
        Some(bergson::Error::Dist(DistError::PeerFailed { .. }) | bergson::Error::Interrupted) => {
            std::env::var_os(bergson::dist::launch::LAUNCHED).is_some()
        }
        Some(bergson::Error::Dist(DistError::WorkerFailed { code: Some(2), .. })) => true,
        _ => false,
    }
}

/// The one-line message (without `error: `) and exit status of an error.
fn render(err: &anyhow::Error) -> (String, u8) {
    let (msg, code) = match err.downcast_ref::<bergson::Error>() {
        Some(e @ bergson::Error::Interrupted) => (e.to_string(), INTERRUPTED),
        // Workers stopped by Ctrl-C: the launcher reports the interruption once.
        Some(bergson::Error::Dist(bergson::dist::DistError::WorkerFailed {
            code: Some(130),
            ..
        })) => (bergson::Error::Interrupted.to_string(), INTERRUPTED),
        Some(e) if e.is_user_error() => (e.to_string(), USER_ERROR),
        // A worker's failure: exit as it did (its own error line came first).
        Some(
            e @ bergson::Error::Dist(bergson::dist::DistError::WorkerFailed {
                code: Some(code @ 1..=255),
                ..
            }),
        ) => (e.to_string(), *code as u8),
        // This rank stopped because another one failed or vanished.
        Some(
            e @ bergson::Error::Dist(
                bergson::dist::DistError::PeerFailed { .. }
                | bergson::dist::DistError::Collective { .. },
            ),
        ) => (e.to_string(), PEER_FAILED),
        // Internal errors already ask for a report; a failed worker is not a bug.
        Some(e @ (bergson::Error::Internal(_) | bergson::Error::Dist(_))) => {
            (e.to_string(), FAILURE)
        }
        Some(e) => (
            format!("{e} (this is a bug in bergson-rs if your input is valid)"),
            FAILURE,
        ),
        None => (format!("{err:#}"), FAILURE),
    };
    (one_line(&msg), code)
}

/// Clap's errors without the usage block: one `error:` line naming the problem (and the valid
/// choices where clap knows them), then clap's suggestion or a pointer to `--help`. Exit 2.
/// `subcommand` is the one on the command line, if valid: clap names it only in some errors.
pub fn clap_error(e: clap::Error, subcommand: Option<&str>) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let command = usage_command(&text)
        .or_else(|| subcommand.map(|s| format!("bergson {s}")))
        .unwrap_or_else(|| "bergson".to_string());
    let help = format!("`{command} --help`");
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        if command == "bergson" {
            eprintln!(
                "error: no command given; choose one of: {} (e.g. `bergson build <run_path> --model <dir> --dataset <file>`)",
                listed_commands(&text).join(", ")
            );
            eprintln!("hint: `bergson --help` describes the commands");
        } else {
            eprintln!("error: `{command}` needs arguments; {help} lists them");
        }
        return ExitCode::from(2);
    }
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines
        .next()
        .unwrap_or("error: invalid arguments")
        .to_string();
    let first = match e.kind() {
        ErrorKind::ValueValidation => invalid_number(&e).unwrap_or(first),
        ErrorKind::InvalidValue => with_choices(&e, first),
        ErrorKind::MissingRequiredArgument => missing_arguments(&e).unwrap_or(first),
        _ => first,
    };
    eprintln!("{}", one_line(&first));
    // Clap's "a similar ... exists" is the best fix; its other tips (`-- --flag`) mislead here.
    match lines.find(|l| l.starts_with("tip: a similar")) {
        Some(tip) => eprintln!("{tip}"),
        None => eprintln!("hint: {help} lists the flags and their values"),
    }
    ExitCode::from(2)
}

/// The command a clap error is about (`bergson build`), from its usage line.
fn usage_command(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|usage| {
            usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['<', '[', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
}

/// The subcommands listed under `Commands:` in a help text (without `help`).
fn listed_commands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

fn context_string(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A required flag left out (`bergson hessian` without `--method`): clap lists the flags on
/// the lines after its message; named on the error line instead.
fn missing_arguments(e: &clap::Error) -> Option<String> {
    match e.get(ContextKind::InvalidArg)? {
        ContextValue::Strings(args) if !args.is_empty() => Some(format!(
            "error: required flag(s) not given: {}",
            args.join(", ")
        )),
        _ => None,
    }
}

/// `--flag <VALUE>` as clap names an argument, without the value placeholder.
fn flag_name(arg: &str) -> &str {
    arg.split_whitespace().next().unwrap_or(arg)
}

/// A number flag given a non-number or a negative number: what it must be instead.
fn invalid_number(e: &clap::Error) -> Option<String> {
    let arg = context_string(e, ContextKind::InvalidArg)?;
    let value = context_string(e, ContextKind::InvalidValue)?;
    let source = std::error::Error::source(e)?;
    let flag = flag_name(&arg);
    let need = if source.is::<std::num::ParseIntError>() {
        if value.trim().parse::<i128>().is_ok_and(|v| v < 0) {
            "it cannot be negative: pass a whole number of 0 or more"
        } else {
            "pass a whole number"
        }
    } else if source.is::<std::num::ParseFloatError>() {
        "pass a number"
    } else if let Some(low) = range_low(&source.to_string()) {
        // clap's range parser: "0 is not in 1..=2147483647".
        return Some(format!(
            "error: invalid value '{value}' for {flag}: pass a whole number of {low} or more"
        ));
    } else {
        return None;
    };
    Some(format!("error: invalid value '{value}' for {flag}: {need}"))
}

/// The lower bound of clap's "V is not in LOW..=HIGH" range message.
fn range_low(message: &str) -> Option<i128> {
    let (_, range) = message.split_once(" is not in ")?;
    range.split("..").next()?.trim().parse().ok()
}

/// An invalid choice, with the choices appended.
fn with_choices(e: &clap::Error, first: String) -> String {
    match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) if !valid.is_empty() => {
            let first = match (
                context_string(e, ContextKind::InvalidArg),
                context_string(e, ContextKind::InvalidValue),
            ) {
                (Some(arg), Some(value)) if !value.is_empty() => {
                    format!("error: invalid value '{value}' for {}", flag_name(&arg))
                }
                _ => first,
            };
            format!("{first}; choose one of: {}", valid.join(", "))
        }
        _ => first,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(e: bergson::Error) -> (String, u8) {
        render(&anyhow::Error::from(e))
    }

    #[test]
    fn exit_status_tells_user_mistakes_from_bugs() {
        let (msg, code) = rendered(bergson::Error::input("--projection_dim: pass a number"));
        assert_eq!((msg.as_str(), code), ("--projection_dim: pass a number", 2));
        let (_, code) = rendered(bergson::Error::io("x", std::io::ErrorKind::NotFound.into()));
        assert_eq!(code, 2);
        assert_eq!(
            rendered(bergson::Error::Interrupted),
            ("interrupted".into(), 130)
        );

        let (msg, code) = rendered(bergson::Error::internal("row 9 beyond\ngradients.bin"));
        assert_eq!(code, 1);
        assert!(
            msg.starts_with("internal error: row 9 beyond gradients.bin;"),
            "{msg}"
        );
        assert!(msg.contains("please report it"), "{msg}");
        assert!(!msg.contains("if your input is valid"), "{msg}");

        let torch = bergson::Error::Torch(tch::TchError::Torch("CUDA out of memory".into()));
        let (msg, code) = rendered(torch);
        assert_eq!(code, 1);
        assert!(
            msg.starts_with("libtorch: ") && msg.contains("CUDA out of memory"),
            "{msg}"
        );

        let (msg, code) = render(&anyhow::anyhow!("cannot install the Ctrl-C handler"));
        assert_eq!(
            (msg.as_str(), code),
            ("cannot install the Ctrl-C handler", 1)
        );
    }
}
