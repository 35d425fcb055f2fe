//! TRAK's edits of score stores: a member's scores multiplied by its per-document weights
//! (Bergson's `_weight_rows`), and an ensemble's stores averaged into one (`_average_scores`),
//! plus the `trak_weights.npy` / `trak_scale.npy` files beside them.
//!
//! Every value is read into float64, combined, and rounded back to the store's dtype, exactly
//! as Bergson's numpy code does; the `written_i` flags are left as they are (a document with
//! fewer than 2 tokens keeps its unwritten zero). Each edit is written beside its target and
//! renamed over it, so an interruption leaves either the old file or the new one.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};

use crate::error::IoContext;
use crate::index::removal::remove_scratch;
use crate::index::score_store::{read_info, RecordLayout, ScoreInfo};
use crate::{interrupt, Error, Result};

/// The scores' file names in a score directory.
pub const SCORES_BIN: &str = "scores.bin";
/// The per-document weights `1 - p_i` (float64, `[num_rows]`).
pub const WEIGHTS_NPY: &str = "trak_weights.npy";
/// The inverse Gram's scale (float64: a scalar for one member, `[members]` for an ensemble).
pub const SCALE_NPY: &str = "trak_scale.npy";

/// Rows between interrupt checks.
const ROWS_PER_CHECK: usize = 1 << 16;

/// A score store's layout, refused when its rows are tokens.
fn sequence_layout(dir: &Path) -> Result<(ScoreInfo, RecordLayout)> {
    let info = read_info(dir)?;
    if info.attribute_tokens {
        return Err(Error::input(format!(
            "{}: TRAK weighting supports per-sequence scores only; drop --attribute_tokens",
            dir.display()
        )));
    }
    let layout = RecordLayout::from_info(&info)?;
    Ok((info, layout))
}

/// Reads score `(row, column)` of a record buffer as float64.
fn get(bytes: &[u8], layout: &RecordLayout, row: usize, column: usize) -> f64 {
    let at = row * layout.itemsize + column * layout.pair;
    let b = &bytes[at..at + layout.elem];
    match layout.kind {
        tch::Kind::Half => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        tch::Kind::BFloat16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        _ => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    }
}

/// Writes `value` rounded to the store's dtype (numpy's `astype`: round to nearest even).
fn set(bytes: &mut [u8], layout: &RecordLayout, row: usize, column: usize, value: f64) {
    let at = row * layout.itemsize + column * layout.pair;
    let out = &mut bytes[at..at + layout.elem];
    match layout.kind {
        tch::Kind::Half => out.copy_from_slice(&half::f16::from_f64(value).to_le_bytes()),
        tch::Kind::BFloat16 => out.copy_from_slice(&half::bf16::from_f64(value).to_le_bytes()),
        _ => out.copy_from_slice(&(value as f32).to_le_bytes()),
    }
}

fn map_read(path: &Path) -> Result<Option<Mmap>> {
    let file = std::fs::File::open(path).at_path(path)?;
    if file.metadata().at_path(path)?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: a finished score store of this run; nothing writes it while it is mapped.
    Ok(Some(unsafe { Mmap::map(&file) }.at_path(path)?))
}

fn map_write(path: &Path) -> Result<Option<MmapMut>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at_path(path)?;
    if file.metadata().at_path(path)?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: a temporary file this process just created; nothing else maps it.
    Ok(Some(unsafe { MmapMut::map_mut(&file) }.at_path(path)?))
}

fn check_size(path: &Path, bytes: &[u8], info: &ScoreInfo, layout: &RecordLayout) -> Result<()> {
    if bytes.len() != info.num_rows * layout.itemsize {
        return Err(Error::input(format!(
            "{} holds {} bytes, not the {} rows of {} bytes its info.json describes; rerun the score step",
            path.display(),
            bytes.len(),
            info.num_rows,
            layout.itemsize
        )));
    }
    Ok(())
}

/// Multiplies every query column of the store in `dir` by `factors` (one per row) in place:
/// `score = f32(f64(score) * factor)`. The result is written to `scores.bin.weighted` and
/// renamed over `scores.bin`.
pub fn weight_rows(dir: &Path, factors: &[f64]) -> Result<()> {
    let (info, layout) = sequence_layout(dir)?;
    if factors.len() != info.num_rows {
        return Err(Error::internal(format!(
            "{} weights for the {} rows of {}",
            factors.len(),
            info.num_rows,
            dir.display()
        )));
    }
    let target = dir.join(SCORES_BIN);
    let tmp = dir.join(format!("{SCORES_BIN}.weighted"));
    std::fs::copy(&target, &tmp).at_path(&tmp)?;
    if let Some(mut map) = map_write(&tmp)? {
        check_size(&target, &map, &info, &layout)?;
        for (row, factor) in factors.iter().enumerate() {
            if row % ROWS_PER_CHECK == 0 {
                interrupt::check()?;
            }
            for column in 0..info.num_scores {
                let v = get(&map, &layout, row, column);
                set(&mut map, &layout, row, column, v * factor);
            }
        }
        map.flush().at_path(&tmp)?;
    }
    std::fs::rename(&tmp, &target).at_path(&target)
}

/// Whether `dir` holds an unfinished weighting (`scores.bin.weighted`), which a rerun discards.
pub fn discard_unfinished_weighting(dir: &Path) -> Result<()> {
    let tmp = dir.join(format!("{SCORES_BIN}.weighted"));
    if tmp.exists() {
        std::fs::remove_file(&tmp).at_path(&tmp)?;
    }
    Ok(())
}

/// The ensemble's store in `out` (Bergson's `_average_scores`): a copy of the first member's
/// score directory whose columns are `mean_m(score_m / scale_m) * mean_m(w_m)`, in float64,
/// with the mean weights and every member's scale beside it. Written to `<out>.part` and
/// renamed over `out`.
pub fn average_members(members: &[PathBuf], out: &Path) -> Result<()> {
    let first = members
        .first()
        .ok_or_else(|| Error::internal("an ensemble of no members"))?;
    let (info, layout) = sequence_layout(first)?;
    let mut weights: Option<Vec<f64>> = None;
    let mut scales = Vec::with_capacity(members.len());
    let mut maps = Vec::with_capacity(members.len());
    for dir in members {
        let (theirs, their_layout) = sequence_layout(dir)?;
        if theirs.num_rows != info.num_rows
            || theirs.num_scores != info.num_scores
            || their_layout != layout
        {
            return Err(Error::input(format!(
                "ensemble members' scores differ in shape ({} and {}); rerun them with the same data and queries",
                first.display(),
                dir.display()
            )));
        }
        let w = read_npy(&dir.join(WEIGHTS_NPY))?;
        if w.len() != info.num_rows {
            return Err(Error::input(format!(
                "{} has {} weights for {} rows; delete it and rerun with --resume",
                dir.join(WEIGHTS_NPY).display(),
                w.len(),
                info.num_rows
            )));
        }
        // numpy's mean over axis 0 of the stacked weights: summed member by member.
        weights = Some(match weights {
            None => w,
            Some(acc) => acc.iter().zip(&w).map(|(a, b)| a + b).collect(),
        });
        scales.push(read_scalar_npy(&dir.join(SCALE_NPY))?);
        let path = dir.join(SCORES_BIN);
        let map = map_read(&path)?;
        if let Some(m) = &map {
            check_size(&path, m, &info, &layout)?;
        }
        maps.push(map);
    }
    let m = members.len() as f64;
    let weights: Vec<f64> = weights
        .unwrap_or_default()
        .into_iter()
        .map(|w| w / m)
        .collect();

    let part = PathBuf::from(format!("{}.part", out.display()));
    if part.exists() {
        remove_scratch(&part)?;
    }
    if out.exists() || out.is_symlink() {
        remove_scratch(out)?;
    }
    copy_dir(first, &part)?;
    let target = part.join(SCORES_BIN);
    if let Some(mut map) = map_write(&target)? {
        for (row, w) in weights.iter().enumerate() {
            if row % ROWS_PER_CHECK == 0 {
                interrupt::check()?;
            }
            for column in 0..info.num_scores {
                let mut acc = 0.0f64;
                for (member, scale) in maps.iter().zip(&scales) {
                    let bytes = member.as_deref().unwrap_or_default();
                    acc += get(bytes, &layout, row, column) / scale;
                }
                set(&mut map, &layout, row, column, acc / m * w);
            }
        }
        map.flush().at_path(&target)?;
    }
    write_npy(&part.join(WEIGHTS_NPY), &weights, &[weights.len() as u64])?;
    write_npy(&part.join(SCALE_NPY), &scales, &[scales.len() as u64])?;
    crate::index::run_dir::finish(&part, out)
}

/// Copies a directory tree (a score directory: files and `data.hf/`).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).at_path(to)?;
    for entry in std::fs::read_dir(from).at_path(from)? {
        let entry = entry.at_path(from)?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().at_path(&src)?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).at_path(&dst)?;
        }
    }
    Ok(())
}

/// Writes a float64 `.npy` of `shape` (`[]`: a scalar, as `np.save` writes a Python float),
/// through `<path>.part` and a rename.
pub fn write_npy(path: &Path, values: &[f64], shape: &[u64]) -> Result<()> {
    use npyz::WriterBuilder;
    let part = PathBuf::from(format!("{}.part", path.display()));
    {
        let file = std::fs::File::create(&part).at_path(&part)?;
        let mut writer = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(shape)
            .writer(std::io::BufWriter::new(file))
            .begin_nd()
            .at_path(&part)?;
        writer.extend(values.iter().copied()).at_path(&part)?;
        writer.finish().at_path(&part)?;
    }
    std::fs::rename(&part, path).at_path(path)
}

/// Reads a float64 `.npy` (any shape) as a flat vector.
pub fn read_npy(path: &Path) -> Result<Vec<f64>> {
    let bytes = std::fs::read(path).at_path(path)?;
    let bad = |e: std::io::Error| {
        Error::input(format!(
            "{} is not a float64 .npy file ({e}); delete it and rerun with --resume",
            path.display()
        ))
    };
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(bad)?;
    npy.into_vec::<f64>().map_err(bad)
}

/// Reads a float64 `.npy` scalar.
pub fn read_scalar_npy(path: &Path) -> Result<f64> {
    match read_npy(path)?.as_slice() {
        [v] => Ok(*v),
        other => Err(Error::input(format!(
            "{} holds {} values, not one scale; delete it and rerun with --resume",
            path.display(),
            other.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::score_store::ScoreWriter;
    use tch::{Kind, Tensor};

    fn store(dir: &Path, values: &[f32], rows: usize, kind: Kind, written: &[usize]) {
        std::fs::create_dir_all(dir).unwrap();
        let cols = values.len() / rows;
        let mut w = ScoreWriter::create(dir, rows, rows, cols, kind, false, false).unwrap();
        let all = Tensor::from_slice(values).view([rows as i64, cols as i64]);
        let picked: Vec<i64> = written.iter().map(|&r| r as i64).collect();
        let t = all.index_select(0, &Tensor::from_slice(&picked));
        w.write(written, &t, 0).unwrap();
        w.sync().unwrap();
    }

    fn read_all(dir: &Path) -> (Vec<f64>, Vec<bool>) {
        crate::index::score_store::ScoreStore::open(dir)
            .unwrap()
            .values()
            .unwrap()
    }

    #[test]
    fn weighting_multiplies_in_float64_and_keeps_written_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let vals = [1.5f32, -2.0, 3.25, 0.1, 7.0, -0.5];
        store(&dir, &vals, 3, Kind::Float, &[0, 2]);
        let factors = [0.5, 10.0, 1.0 / 3.0];
        weight_rows(&dir, &factors).unwrap();
        let (got, written) = read_all(&dir);
        assert_eq!(written, [true, true, false, false, true, true]);
        let want = [
            (1.5f64 * 0.5) as f32,
            (-2.0f64 * 0.5) as f32,
            0.0,
            0.0,
            (7.0f64 / 3.0) as f32,
            (-0.5f64 / 3.0) as f32,
        ];
        for (g, w) in got.iter().zip(want) {
            assert_eq!(*g as f32, w);
        }
        assert!(!dir.join("scores.bin.weighted").exists());
    }

    #[test]
    fn ensemble_is_the_mean_of_scaled_scores_times_the_mean_weight() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for kind in [Kind::Float, Kind::Half] {
            store(&a, &[1.0, 2.0, 3.0, 4.0], 2, kind, &[0, 1]);
            store(&b, &[-1.0, 0.5, 8.0, 2.0], 2, kind, &[0, 1]);
            write_npy(&a.join(WEIGHTS_NPY), &[0.9, 0.5], &[2]).unwrap();
            write_npy(&b.join(WEIGHTS_NPY), &[0.7, 0.25], &[2]).unwrap();
            write_npy(&a.join(SCALE_NPY), &[2.0], &[]).unwrap();
            write_npy(&b.join(SCALE_NPY), &[0.5], &[]).unwrap();
            let out = tmp.path().join("out");
            average_members(&[a.clone(), b.clone()], &out).unwrap();
            let (got, _) = read_all(&out);
            let w = [(0.9 + 0.7) / 2.0, (0.5 + 0.25) / 2.0];
            let ma = [1.0, 2.0, 3.0, 4.0];
            let mb = [-1.0, 0.5, 8.0, 2.0];
            for i in 0..4 {
                let want = (ma[i] / 2.0 + mb[i] / 0.5) / 2.0 * w[i / 2];
                let tol = if kind == Kind::Half { 2e-3 } else { 1e-6 };
                assert!(
                    (got[i] - want).abs() <= tol * want.abs(),
                    "{kind:?} {i}: {} {want}",
                    got[i]
                );
            }
            assert_eq!(read_npy(&out.join(WEIGHTS_NPY)).unwrap(), w);
            assert_eq!(read_npy(&out.join(SCALE_NPY)).unwrap(), [2.0, 0.5]);
            assert_eq!(read_scalar_npy(&a.join(SCALE_NPY)).unwrap(), 2.0);
        }
    }
}
