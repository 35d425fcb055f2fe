//! Scoring one batch of training gradients against the query gradients (Bergson's `Scorer`):
//! `S[b, q] = Σ_m G_m[b] · Q_m[q]`, one GEMM per module in the score dtype, summed in float32;
//! with `unit_normalize` each row is divided by its gradient's norm (floored at 1e-12); with
//! `nearest` the best query column is kept.

use tch::{Device, Kind, Tensor};

use crate::collect::BlockGradient;
use crate::config::ScoreMode;
use crate::hessians::preconditioner::Preconditioner;
use crate::{Error, Result};

/// The queries, ready to meet batches of training gradients.
pub struct Scorer {
    /// `(module, [size, Q])`: each module's query block, transposed, in the score dtype.
    queries_t: Vec<(String, Tensor)>,
    kind: Kind,
    unit_normalize: bool,
    mode: ScoreMode,
}

impl Scorer {
    /// A scorer for `queries` (`(module, [Q, size])`, already preprocessed) in dtype `kind`
    /// on `device`.
    pub fn new(
        queries: &[(String, Tensor)],
        kind: Kind,
        device: Device,
        unit_normalize: bool,
        mode: ScoreMode,
    ) -> Result<Self> {
        let queries_t = queries
            .iter()
            .map(|(name, q)| {
                Ok((
                    name.clone(),
                    q.f_to_device(device)?.f_to_kind(kind)?.f_tr()?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Scorer {
            queries_t,
            kind,
            unit_normalize,
            mode,
        })
    }

    /// Number of query columns (before `nearest`).
    pub fn num_queries(&self) -> i64 {
        self.queries_t
            .first()
            .map(|(_, q)| q.size()[1])
            .unwrap_or(0)
    }

    /// Columns each row gets: the queries, or one with `nearest`.
    pub fn width(&self) -> i64 {
        match self.mode {
            ScoreMode::Nearest => 1,
            ScoreMode::Individual => self.num_queries(),
        }
    }

    /// Scores `[rows, width]` (float32) of one batch's blocks. `save_kind` is the dtype the
    /// index would store (already formed blocks are rounded through it, as in Bergson).
    pub fn score(&self, blocks: &[(String, BlockGradient)], save_kind: Kind) -> Result<Tensor> {
        self.score_transformed(blocks, save_kind, None)
    }

    /// [`score`](Self::score) with the training gradients first formed and multiplied by
    /// `index_transform` (two-sided preconditioning: `H^-1/2` on the index side too, before
    /// their norms are taken), as Bergson's `index_transform`.
    pub fn score_transformed(
        &self,
        blocks: &[(String, BlockGradient)],
        save_kind: Kind,
        index_transform: Option<&Preconditioner>,
    ) -> Result<Tensor> {
        let transformed: Vec<(String, BlockGradient)>;
        let blocks = match index_transform {
            None => blocks,
            Some(p) => {
                let formed: Vec<(String, Tensor)> = blocks
                    .iter()
                    .map(|(n, b)| {
                        Ok((
                            n.clone(),
                            b.for_scoring(self.kind, save_kind)?.materialize()?,
                        ))
                    })
                    .collect::<Result<_>>()?;
                transformed = p
                    .apply(&formed)?
                    .into_iter()
                    .map(|(n, t)| Ok((n, BlockGradient::formed(t.f_to_kind(self.kind)?))))
                    .collect::<Result<_>>()?;
                &transformed
            }
        };
        let mut scores: Option<Tensor> = None;
        let mut sq_norm: Option<Tensor> = None;
        for (name, q_t) in &self.queries_t {
            let block = blocks
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b)
                .ok_or_else(|| {
                    Error::input(format!(
                        "the query index has module '{name}', which this run does not collect; \
                         score with the --index_cfg.modules / --filter_modules the query index \
                         was built with, or restrict the query with --score_cfg.modules"
                    ))
                })?;
            // Transformed blocks are already formed in the score dtype.
            let g = match index_transform {
                Some(_) => BlockGradient::formed(block.materialize()?),
                None => block.for_scoring(self.kind, save_kind)?,
            };
            let part = g.dot(q_t)?.f_to_kind(Kind::Float)?;
            scores = Some(match scores {
                Some(mut s) => s.f_add_(&part)?,
                None => part,
            });
            if self.unit_normalize {
                let n = g.sq_norm()?;
                sq_norm = Some(match sq_norm {
                    Some(mut s) => s.f_add_(&n)?,
                    None => n,
                });
            }
        }
        let mut scores =
            scores.ok_or_else(|| Error::internal("the scorer has no query modules"))?;
        if let Some(n) = sq_norm {
            scores = scores.f_div(&n.f_sqrt()?.f_clamp_min(1e-12)?.f_unsqueeze(1)?)?;
        }
        Ok(match self.mode {
            ScoreMode::Nearest => scores.f_amax([-1i64].as_slice(), true)?,
            ScoreMode::Individual => scores,
        })
    }
}
