//! Progress of long work. [`Progress`], for batches: an `indicatif` bar on a terminal (documents, tokens, tokens/s, ETA),
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

/// Whether progress output is off for the whole process (`--quiet`).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns all progress output off (or on) for the process; the CLI's `--quiet` sets it.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Whether progress output is off ([`set_quiet`]).
pub fn is_quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Seconds between plain progress lines of a [`Phase`].
const PHASE_PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Progress of one preparatory phase (reading a file, tokenising, loading a model): a bar
/// with rate and ETA on a terminal, a line every few seconds otherwise, nothing when quiet
/// ([`set_quiet`]) or when the phase ends within a moment.
pub struct Phase {
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    bar: Option<ProgressBar>,
    plain: bool,
    start: Instant,
    last_line: Instant,
}

impl Phase {
    /// A phase named `label` ("reading data.jsonl" style labels work best) counting `unit`s
    /// ("bytes" are shown as sizes), with `total` when it is known.
    pub fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Self {
        let quiet = is_quiet();
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let bar = match total {
                Some(t) => {
                    ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr_with_hz(5))
                }
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5)),
            };
            let counts = if unit == "bytes" {
                "{binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})"
            } else if total.is_some() {
                "{human_pos}/{human_len} {msg} ({per_sec})"
            } else {
                "{human_pos} {msg} ({per_sec})"
            };
            let template = if total.is_some() {
                format!(
                    "{{spinner}} {label} [{{elapsed_precise}}] {{wide_bar}} {counts}, ETA {{eta}}"
                )
            } else {
                format!("{{spinner}} {label} [{{elapsed_precise}}] {counts}")
            };
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            if unit != "bytes" {
                bar.set_message(unit);
            }
            bar
        });
        let now = Instant::now();
        Phase {
            label,
            unit,
            total,
            done: 0,
            bar,
            plain: !quiet && !tty,
            start: now,
            last_line: now,
        }
    }

    /// Counts `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// Sets the units done.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.plain && self.last_line.elapsed() >= PHASE_PLAIN_EVERY {
            let secs = self.start.elapsed().as_secs_f64().max(1e-9);
            let of = self.total.map(|t| format!(" of {t}")).unwrap_or_default();
            let rate = plain_rate(done as f64 / secs, self.unit);
            let eta = match self.total {
                Some(t) if done > 0 && t > done => {
                    format!(", ETA {:.0} s", (t - done) as f64 * secs / done as f64)
                }
                _ => String::new(),
            };
            eprintln!(
                "bergson: {}: {}{of} {} ({rate}{eta})",
                self.label, done, self.unit
            );
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

impl Drop for Phase {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A rate as a person reads it: units per second, or seconds per unit when slower than one a
/// second (a retrain every 12 s reads "12.0 s per retrain", not "0 retrains/s").
fn plain_rate(per_sec: f64, unit: &str) -> String {
    if per_sec >= 1.0 || per_sec <= 0.0 {
        format!("{per_sec:.0} {unit}/s")
    } else {
        let one = unit.strip_suffix('s').unwrap_or(unit);
        format!("{:.1} s per {one}", 1.0 / per_sec)
    }
}

#[cfg(test)]
mod plain_rate_tests {
    use super::plain_rate;

    #[test]
    fn slow_units_read_as_seconds_per_unit() {
        assert_eq!(plain_rate(250.4, "tokens"), "250 tokens/s");
        assert_eq!(plain_rate(0.08, "retrains"), "12.5 s per retrain");
        assert_eq!(plain_rate(0.0, "retrains"), "0 retrains/s");
    }
}
