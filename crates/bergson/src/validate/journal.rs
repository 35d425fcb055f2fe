//! What makes a validation resumable and its outputs whole: CSV files as Python's `csv` module
//! writes them (floats in `repr` form, which reads back to the same number), a journal that a
//! retrain's rows are appended to (and synced) as soon as it finishes, and atomic final files
//! (written beside, then renamed into place).

use crate::error::IoContext;
use crate::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Python's `repr(float)`: the shortest digits that read back to `x`, in scientific notation
/// below 1e-4 or from 1e16 (`1e-05`, `1.5e+16`), `nan`, `inf`.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = x.abs();
    if x == 0.0 || (1e-4..1e16).contains(&a) {
        let s = format!("{x}");
        return if s.contains('.') { s } else { format!("{s}.0") };
    }
    let s = format!("{x:e}");
    let (mantissa, exp) = s.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = std::fs::File::create(&tmp).at_path(&tmp)?;
        f.write_all(bytes).at_path(&tmp)?;
        f.sync_all().at_path(&tmp)?;
    }
    std::fs::rename(&tmp, path).at_path(path)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// CSV text: a header and rows, comma-separated, `\r\n` line ends (Python's `csv.writer`).
pub fn csv_text(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = header.join(",");
    out.push_str("\r\n");
    for r in rows {
        out.push_str(&r.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The journal of a validation: `<output>.part`, the output's header then one block of rows
/// per finished retrain (a unit, keyed by its first field), each block appended and synced
/// when its retrain ends. A killed run leaves at most a torn last line, which resuming drops.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    /// The journal of `output`: with `resume`, the complete rows already in it, or in
    /// `output` itself when a finished run left no journal (a torn last line and any row
    /// without `header.len()` fields dropped); otherwise a fresh one.
    pub fn open(
        output: &Path,
        header: &[&str],
        resume: bool,
    ) -> Result<(Journal, Vec<Vec<String>>)> {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push(".part");
        let path = output.with_file_name(name);
        let mut rows = Vec::new();
        // A finished run left no journal but its output, which holds the same rows.
        let source = if path.is_file() { &path } else { output };
        if resume && source.is_file() {
            let text = std::fs::read_to_string(source).at_path(source)?;
            let mut lines: Vec<&str> = text.split("\r\n").collect();
            // The piece after the last line end is torn (or empty).
            lines.pop();
            if lines.first().map(|h| h.split(',').collect::<Vec<_>>()) == Some(header.to_vec()) {
                for line in &lines[1..] {
                    let fields: Vec<String> = line.split(',').map(str::to_owned).collect();
                    if fields.len() == header.len() {
                        rows.push(fields);
                    }
                }
            }
        }
        write_atomic(&path, csv_text(header, &rows).as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .at_path(&path)?;
        Ok((Journal { path, file }, rows))
    }

    /// Appends one retrain's rows and syncs them to disk.
    pub fn append(&mut self, rows: &[Vec<String>]) -> Result<()> {
        let mut text = String::new();
        for r in rows {
            text.push_str(&r.join(","));
            text.push_str("\r\n");
        }
        self.file.write_all(text.as_bytes()).at_path(&self.path)?;
        self.file.sync_data().at_path(&self.path)
    }

    /// Removes the journal once the final outputs are written.
    pub fn remove(self) -> Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.path).at_path(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's `repr` of the same floats.
    #[test]
    fn floats_print_as_python_repr() {
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(-2.5e-5), "-2.5e-05");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(123456.789), "123456.789");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(f64::NAN), "nan");
        assert_eq!(py_float(-0.0), "-0.0");
        assert_eq!(py_float(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn journal_keeps_complete_rows_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("validation.csv");
        let header = ["subset", "diff", "score_sum"];
        let (mut j, rows) = Journal::open(&out, &header, true).unwrap();
        assert!(rows.is_empty());
        j.append(&[vec!["0".into(), "0.5".into(), "1.0".into()]])
            .unwrap();
        drop(j);
        let part = dir.path().join("validation.csv.part");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .unwrap();
        f.write_all(b"1,0.2").unwrap();
        drop(f);
        let (j, rows) = Journal::open(&out, &header, true).unwrap();
        assert_eq!(rows, [vec!["0", "0.5", "1.0"]]);
        assert_eq!(
            std::fs::read_to_string(&part).unwrap(),
            "subset,diff,score_sum\r\n0,0.5,1.0\r\n"
        );
        j.remove().unwrap();
        // A finished output is resumed from as a journal.
        std::fs::write(&out, "subset,diff,score_sum\r\n0,0.5,1.0\r\n3,0.25,2.0\r\n").unwrap();
        let (j, rows) = Journal::open(&out, &header, true).unwrap();
        assert_eq!(rows.len(), 2);
        j.remove().unwrap();
        // Without resume the journal starts over.
        let (_, rows) = Journal::open(&out, &header, false).unwrap();
        assert!(rows.is_empty());
    }
}
