//! `bergson leaderboard`: Bergson's leaderboard design (LDS over leave-1%-out retrains and the
//! proponent QLD, every method side by side) at the size of one CPU.
//!
//! - [`corpus`]: the generated training documents and held-out questions.
//! - [`bm25`]: the lexical baseline.
//! - [`evaluate`]: LDS and QLD of one method's scores from retrains every method shares.
//! - [`chart`]: the PNG.
//!
//! The command (`bergson-cli`'s `leaderboard.rs`) runs the methods and the retrains; this
//! module holds what is computed from their outputs.

pub mod bm25;
pub mod chart;
pub mod corpus;
pub mod evaluate;

use evaluate::Estimate;

/// The tool that computed a row's scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// This implementation.
    BergsonRs,
    /// Python Bergson 2.5.1 (its scores, our retrains).
    PythonBergson,
}

impl Tool {
    /// The name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Tool::BergsonRs => "bergson-rs",
            Tool::PythonBergson => "Python Bergson 2.5.1",
        }
    }
}

/// One row of the leaderboard.
#[derive(Debug, Clone)]
pub struct Row {
    /// The method, as the table names it.
    pub method: String,
    /// Who computed the scores.
    pub tool: Tool,
    /// The LDS with its interval.
    pub lds: Estimate,
    /// The proponent QLD with its interval (None when not measured).
    pub qld: Option<Estimate>,
    /// Wall seconds to compute the scores.
    pub seconds: f64,
}

fn fmt_estimate(e: &Estimate) -> String {
    if !e.value.is_finite() {
        return "n/a".into();
    }
    if e.low.is_finite() && e.high.is_finite() {
        format!("{:.3} [{:.3}, {:.3}]", e.value, e.low, e.high)
    } else {
        format!("{:.3}", e.value)
    }
}

/// The Markdown table of `rows`, best LDS first (rows keep their order among equals).
pub fn markdown_table(rows: &[Row]) -> String {
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |r: &Row| {
            if r.lds.value.is_finite() {
                r.lds.value
            } else {
                f64::NEG_INFINITY
            }
        };
        key(b).total_cmp(&key(a))
    });
    let mut s = String::from(
        "| Method | Scores by | LDS [95% CI] | Proponent QLD [95% CI] | Wall time (s) |\n|---|---|---|---|---|\n",
    );
    for r in sorted {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} |\n",
            r.method,
            r.tool.name(),
            fmt_estimate(&r.lds),
            r.qld.as_ref().map_or("not measured".into(), fmt_estimate),
            r.seconds
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sorts_by_lds_and_formats_intervals() {
        let e = |v: f64| Estimate {
            value: v,
            low: v - 0.1,
            high: v + 0.1,
        };
        let rows = vec![
            Row {
                method: "cosine".into(),
                tool: Tool::BergsonRs,
                lds: e(0.1),
                qld: None,
                seconds: 1.0,
            },
            Row {
                method: "MAGIC".into(),
                tool: Tool::PythonBergson,
                lds: e(0.9),
                qld: Some(e(0.05)),
                seconds: 20.25,
            },
        ];
        let t = markdown_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[2],
            "| MAGIC | Python Bergson 2.5.1 | 0.900 [0.800, 1.000] | 0.050 [-0.050, 0.150] | 20.2 |"
        );
        assert!(
            lines[3].starts_with("| cosine | bergson-rs | 0.100 [0.000, 0.200] | not measured |")
        );
    }
}
