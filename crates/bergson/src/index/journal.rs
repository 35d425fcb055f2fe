//! The resume journal, `<run>.part/journal.jsonl`: one line per batch whose rows are durably in
//! gradients.bin (written after the file is synced), so an interrupted build continues from the
//! last durable batch and produces the same bytes as an uninterrupted one. Each rank of a
//! multi-process build keeps its own ([`journal_name`], [`aggregate_name`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::{Error, Result};

/// File name inside the `.part` directory.
pub const JOURNAL: &str = "journal.jsonl";
/// The aggregation accumulator snapshot (with `--aggregation`).
pub const AGGREGATE: &str = "aggregate.bin";

/// The journal of rank `rank` of a job of `world` processes (`journal.jsonl` for one).
pub fn journal_name(rank: usize, world: usize) -> String {
    match world {
        1 => JOURNAL.to_string(),
        _ => format!("journal.rank{rank}-of{world}.jsonl"),
    }
}

/// The aggregation snapshot of rank `rank` of `world` (`aggregate.bin` for one).
pub fn aggregate_name(rank: usize, world: usize) -> String {
    match world {
        1 => AGGREGATE.to_string(),
        _ => format!("aggregate.rank{rank}-of{world}.bin"),
    }
}

/// Every journal and aggregation snapshot in `part`, of any rank and job size.
pub fn resume_files(part: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(part) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (name.starts_with("journal.") && name.ends_with(".jsonl"))
                || (name.starts_with("aggregate.") && name.ends_with(".bin"))
        })
        .collect()
}

/// Whether `part` holds a journal of any rank.
pub fn has_journal(part: &Path) -> bool {
    resume_files(part)
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "jsonl"))
}

/// The first line: what the journal's batches refer to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Fingerprint of the tokenised documents and batch plan.
    pub fingerprint: String,
    /// Number of batches in the plan.
    pub num_batches: usize,
}

/// One durable batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position of the batch in the plan.
    pub batch: usize,
    /// Per-document losses, as the f32 bit patterns (exact round trip).
    pub loss_bits: Vec<u32>,
    /// Gradient-carrying positions in the batch.
    pub positions: usize,
}

/// An open journal.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Starts a new journal `name` (see [`journal_name`]).
    fn create_named(part: &Path, name: &str, header: &Header) -> Result<Self> {
        let path = part.join(name);
        let mut file = File::create(&path).at_path(&path)?;
        writeln!(file, "{}", serde_json::to_string(header).map_err(json_err)?).at_path(&path)?;
        file.sync_data().at_path(&path)?;
        Ok(Journal { file, path })
    }

    /// The journal `name` of a run that resumes (`resume`) or starts fresh: the entries
    /// already durable (none when fresh or without a usable journal), and the journal
    /// rewritten with just those, open for appending.
    pub fn open_named(
        part: &Path,
        name: &str,
        header: &Header,
        resume: bool,
    ) -> Result<(Vec<Entry>, Self)> {
        let done = if resume {
            Self::read_named(part, name, header)?.unwrap_or_default()
        } else {
            Vec::new()
        };
        let journal = Self::reopen_named(part, name, &done, header)?;
        Ok((done, journal))
    }

    /// Reads the entries of the journal `name` if its header matches; a torn last line (a kill
    /// mid-write) is ignored. `None` when there is no usable journal.
    pub fn read_named(part: &Path, name: &str, header: &Header) -> Result<Option<Vec<Entry>>> {
        let path = part.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let mut lines = text.split_inclusive('\n');
        let Some(first) = lines.next() else {
            return Ok(None);
        };
        match serde_json::from_str::<Header>(first.trim_end()) {
            Ok(h) if h == *header => {}
            Ok(_) => {
                return Err(Error::input(format!(
                    "{} was started on different data (the dataset or tokenizer changed); pass --overwrite to start over",
                    part.display()
                )))
            }
            Err(_) => return Ok(None),
        }
        let mut entries = Vec::new();
        for line in lines {
            if !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<Entry>(line.trim_end()) {
                Ok(e) => entries.push(e),
                Err(_) => break,
            }
        }
        Ok(Some(entries))
    }

    /// Rewrites the journal `name` with the entries `keep` (dropping a torn last line), open
    /// for appending.
    pub fn reopen_named(part: &Path, name: &str, keep: &[Entry], header: &Header) -> Result<Self> {
        let mut j = Journal::create_named(part, name, header)?;
        for e in keep {
            j.append_unsynced(e)?;
        }
        j.sync()?;
        Ok(j)
    }

    fn append_unsynced(&mut self, e: &Entry) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(e).map_err(json_err)?).at_path(&self.path)
    }

    /// Appends entries (their rows must already be synced) and syncs the journal.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        for e in entries {
            self.append_unsynced(e)?;
        }
        self.sync()
    }

    fn sync(&mut self) -> Result<()> {
        self.file.flush().at_path(&self.path)?;
        self.file.sync_data().at_path(&self.path)
    }
}

fn json_err(e: serde_json::Error) -> Error {
    Error::internal(format!("cannot serialise a journal entry: {e}"))
}
