//! Typed helpers for the small torch.save files a bergson build writes next to its index:
//! `hessians.pth` / `hessians_eigen.pth` (an empty dict when no hessians were computed) and
//! `total_processed.pt` (a 0-d int64 tensor).

use std::path::Path;

use tch::{Kind, Tensor};

use super::{load, save, Value};
use crate::{Error, Result};

/// Writes an empty dict (`torch.save({}, path)`), as bergson does for `hessians.pth` and
/// `hessians_eigen.pth` when a build computes none.
pub fn save_empty_dict(path: &Path) -> Result<()> {
    save(path, &Value::Dict(Vec::new()))
}

/// Writes `value` as a 0-d int64 tensor (`torch.save(torch.tensor(value), path)`), the format
/// of `total_processed.pt`.
pub fn save_scalar_i64(path: &Path, value: i64) -> Result<()> {
    let t = Tensor::from_slice(&[value]).f_reshape([0i64; 0])?;
    save(path, &Value::Tensor(t))
}

/// Reads an integer saved as a one-element integer tensor (such as `total_processed.pt`) or
/// as a Python int.
pub fn load_scalar_i64(path: &Path) -> Result<i64> {
    let wrong = |what: String| {
        Error::input(format!(
            "{} holds {what}, not an integer scalar (a 0-d int64 tensor as in \
             total_processed.pt)",
            path.display()
        ))
    };
    match load(path)? {
        Value::Int(i) => Ok(i),
        Value::Tensor(t) => {
            let kind = t.kind();
            let integral = matches!(
                kind,
                Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
            );
            if !integral || t.numel() != 1 {
                return Err(wrong(format!("a {kind:?} tensor of shape {:?}", t.size())));
            }
            let values = Vec::<i64>::try_from(t.f_flatten(0, -1)?.f_to_kind(Kind::Int64)?)?;
            values
                .first()
                .copied()
                .ok_or_else(|| wrong("an empty tensor".into()))
        }
        other => Err(wrong(format!("a {}", other.type_name()))),
    }
}
