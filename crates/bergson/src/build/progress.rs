//! Progress of a build: an `indicatif` bar on a terminal (documents, tokens, tokens/s, ETA),
//! plain periodic lines when stderr is not a terminal, nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports tokens processed.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total_docs: usize,
    total_tokens: u64,
    docs: usize,
    tokens: u64,
    /// Tokens done by an earlier run, left out of the rate.
    resumed_tokens: u64,
    start: Instant,
    last_line: Instant,
}

/// Seconds between plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    /// Progress over `total_docs` documents of `total_tokens` tokens.
    pub fn new(quiet: bool, total_docs: usize, total_tokens: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_tokens),
                ProgressDrawTarget::stderr_with_hz(5),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {msg} ({per_sec}), ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            plain: !quiet && !tty,
            total_docs,
            total_tokens,
            docs: 0,
            tokens: 0,
            resumed_tokens: 0,
            start: now,
            last_line: now,
        }
    }

    /// Counts work already done by an earlier, interrupted run.
    pub fn resume(&mut self, docs: usize, tokens: u64) {
        self.docs += docs;
        self.tokens += tokens;
        self.resumed_tokens += tokens;
        if let Some(bar) = &self.bar {
            bar.set_position(self.tokens);
            bar.reset_eta();
        }
    }

    /// Counts one finished batch.
    pub fn advance(&mut self, docs: usize, tokens: u64) {
        self.docs += docs;
        self.tokens += tokens;
        let msg = format!(
            "{}/{} docs, {}/{} tokens",
            self.docs, self.total_docs, self.tokens, self.total_tokens
        );
        if let Some(bar) = &self.bar {
            bar.set_position(self.tokens);
            bar.set_message(msg);
        } else if self.plain && self.last_line.elapsed() >= PLAIN_EVERY {
            let done_here = self.tokens - self.resumed_tokens;
            let rate = done_here as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            eprintln!("bergson: {msg} ({rate:.0} tokens/s)");
            self.last_line = Instant::now();
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
