//! Cosine similarity between gradient rows, and the best matches per query: the simplest
//! attribution score (Bergson's `--unit_normalize` scoring without a preconditioner).

use tch::{Kind, Tensor};

use crate::{Error, Result};

/// `[num_queries, num_train]` cosine similarities of the rows of `queries` `[Q, D]` and `train`
/// `[T, D]`, computed in float64. A zero row has similarity 0 with everything.
pub fn cosine_scores(queries: &Tensor, train: &Tensor) -> Result<Tensor> {
    let (_, dq) = queries.size2()?;
    let (_, dt) = train.size2()?;
    if dq != dt {
        return Err(Error::input(format!(
            "query rows have {dq} columns but training rows have {dt}; build both indexes with the same model, modules and --projection_dim"
        )));
    }
    let unit = |x: &Tensor| -> Result<Tensor> {
        let x = x.f_to_kind(Kind::Double)?;
        let norm = x
            .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
            .f_clamp_min(f64::MIN_POSITIVE)?;
        Ok(x.f_div(&norm)?)
    };
    Ok(unit(queries)?.f_matmul(&unit(train)?.f_transpose(0, 1)?)?)
}

/// For each row of `scores` `[Q, T]`, the `k` best columns as `(column, score)`, best first;
/// ties go to the lower column (a stable sort, as NumPy's `argsort(kind="stable")`).
pub fn top_k(scores: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f64)>>> {
    let (q, t) = scores.size2()?;
    let flat = Vec::<f64>::try_from(
        scores
            .f_to_kind(Kind::Double)?
            .f_contiguous()?
            .f_view([-1])?,
    )?;
    Ok((0..q as usize)
        .map(|i| {
            let row = &flat[i * t as usize..(i + 1) * t as usize];
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.into_iter().take(k).map(|j| (j, row[j])).collect()
        })
        .collect())
}

/// The 0-based rank of column `target` in row `row` of `scores` under the order of [`top_k`]:
/// the columns scoring higher, plus the lower columns scoring the same.
pub fn rank_of(scores: &Tensor, row: usize, target: usize) -> Result<usize> {
    let values = Vec::<f64>::try_from(scores.f_get(row as i64)?.f_to_kind(Kind::Double)?)?;
    let mine = *values
        .get(target)
        .ok_or_else(|| Error::input(format!("column {target} is out of range")))?;
    Ok(values
        .iter()
        .enumerate()
        .filter(|&(j, v)| v.total_cmp(&mine).then(target.cmp(&j)).is_gt())
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_ranking() {
        let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let t = Tensor::from_slice(&[3.0f32, 0.0, 1.0, 1.0, 0.0, -1.0, 0.0, 0.0]).view([4, 2]);
        let s = cosine_scores(&q, &t).unwrap();
        let top = top_k(&s, 3).unwrap();
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert_eq!(top[0][0].0, 0);
        assert!((top[0][0].1 - 1.0).abs() < 1e-15);
        assert_eq!(top[0][1].0, 1);
        assert!((top[0][1].1 - h).abs() < 1e-15);
        // Query 1 = (0, 2): column 1 first, then the tie at 0 between columns 0 and 3 in order.
        assert_eq!(
            top[1].iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1, 0, 3]
        );
        assert_eq!(rank_of(&s, 1, 2).unwrap(), 3);
        assert_eq!(rank_of(&s, 1, 3).unwrap(), 2); // tied with column 0, which comes first
        assert!(
            cosine_scores(&q, &Tensor::zeros([3, 5], (Kind::Float, tch::Device::Cpu))).is_err()
        );
    }
}
