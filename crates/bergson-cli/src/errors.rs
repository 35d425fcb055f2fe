//! Error rendering: one line on stderr and an exit status (2 for the user's mistakes).

use std::process::ExitCode;

/// Prints an error as one line and returns its exit status.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    let (msg, code) = match err.downcast_ref::<bergson::Error>() {
        Some(e @ bergson::Error::Interrupted) => (e.to_string(), 130),
        Some(e) if e.is_user_error() => (e.to_string(), 2),
        Some(e) => (
            format!("{e} (this is a bug in bergson-rs if your input is valid)"),
            1,
        ),
        None => (format!("{err:#}"), 1),
    };
    eprintln!("error: {}", one_line(&msg));
    ExitCode::from(code)
}

/// Clap's errors without the usage block: the first line, and its tip as a hint.
pub fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            },
        );
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("error: invalid arguments");
    eprintln!("{}", first);
    if let Some(tip) = lines.find(|l| l.starts_with("tip:")) {
        eprintln!("{tip}");
    } else {
        eprintln!("hint: run `bergson --help` or `bergson build --help` for the flags");
    }
    ExitCode::from(2)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
