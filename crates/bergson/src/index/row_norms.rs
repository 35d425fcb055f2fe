//! Cached row norms of a gradient index (`<index>/row_norms.bergson-rs`): the L2 norm of every
//! row over all modules, in float32, so a cosine search (`--unit_norm`) reads `gradients.bin`
//! once. The cache records the size and modification time of `gradients.bin` it was computed
//! from and is ignored (and rewritten) when either changes. Python Bergson ignores the file.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::IoContext;
use crate::Result;

/// File name of the cache inside the index directory.
pub const ROW_NORMS: &str = "row_norms.bergson-rs";
const MAGIC: &[u8; 8] = b"BRSNORM1";
const HEADER: usize = 8 + 8 + 8 + 8 + 4;

/// What the cache must agree with: `gradients.bin`'s rows, size and modification time.
fn stamp(dir: &Path, rows: usize) -> Option<[u8; HEADER]> {
    let meta = std::fs::metadata(dir.join("gradients.bin")).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&(rows as u64).to_le_bytes());
    h[16..24].copy_from_slice(&meta.len().to_le_bytes());
    h[24..32].copy_from_slice(&mtime.as_secs().to_le_bytes());
    h[32..36].copy_from_slice(&mtime.subsec_nanos().to_le_bytes());
    Some(h)
}

fn path(dir: &Path) -> PathBuf {
    dir.join(ROW_NORMS)
}

/// The cached norms of the index in `dir` with `rows` rows, if a valid cache exists.
pub fn load(dir: &Path, rows: usize) -> Option<Vec<f32>> {
    let want = stamp(dir, rows)?;
    let bytes = std::fs::read(path(dir)).ok()?;
    if bytes.len() != HEADER + rows * 4 || bytes[..HEADER] != want {
        return None;
    }
    Some(
        bytes[HEADER..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Writes the cache (atomically: a temporary file renamed into place).
pub fn save(dir: &Path, norms: &[f32]) -> Result<()> {
    let Some(header) = stamp(dir, norms.len()) else {
        return Ok(());
    };
    let mut bytes = Vec::with_capacity(HEADER + norms.len() * 4);
    bytes.extend_from_slice(&header);
    for n in norms {
        bytes.extend_from_slice(&n.to_le_bytes());
    }
    let tmp = dir.join(format!("{ROW_NORMS}.tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).at_path(&tmp)?;
    std::fs::rename(&tmp, path(dir)).at_path(path(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_goes_stale_with_the_index() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gradients.bin"), [0u8; 24]).unwrap();
        assert!(load(dir.path(), 3).is_none());
        save(dir.path(), &[1.0, 2.5, 0.0]).unwrap();
        assert_eq!(load(dir.path(), 3).unwrap(), [1.0, 2.5, 0.0]);
        assert!(load(dir.path(), 2).is_none());
        std::fs::write(dir.path().join("gradients.bin"), [0u8; 32]).unwrap();
        assert!(load(dir.path(), 3).is_none());
    }
}
