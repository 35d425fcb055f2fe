//! The training data stream of Python Bergson 2.5.1's trainer (`magic/cli.py::run_magic` and
//! `magic/data_stream.py`): every row numbered (`example_ids`) and tagged with its document
//! per token (`doc_ids`), `num_epochs` copies each shuffled as `Dataset.shuffle(seed + epoch)`,
//! the last row repeated (under a fresh document id whose weight is zero) until the rows fill
//! whole batches, then consecutive batches of `batch_size` rows, right-padded.
//!
//! The data weights live here: per document `[num_docs]` (gathered per token through
//! `doc_ids`, so a document's weight is shared by all its occurrences) or per token
//! `[num_examples, seq_len]` (gathered through `example_ids`). MAGIC differentiates the
//! trained model with respect to them.

use crate::data::nprandom::permutation;
use crate::data::tokenize::TokenizedRow;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

use super::loss::IGNORE_INDEX;

/// One row of the stream.
#[derive(Debug, Clone)]
pub struct StreamRow {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Labels (-100 = none); the ids when the data has no label column.
    pub labels: Vec<i64>,
    /// The document of every position (as long as the longest row of the dataset).
    pub doc_ids: Vec<i64>,
    /// The row's number in the unshuffled dataset.
    pub example_id: i64,
}

/// What the stream added to fill the last batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Padding {
    /// Rows added (copies of the last row).
    pub num_rows: usize,
}

/// One batch, ready for the loss.
#[derive(Debug)]
pub struct Batch {
    /// `[B, T]` int64, right-padded with 0.
    pub input_ids: Tensor,
    /// `[B, T]` int64, -100 on padding.
    pub labels: Tensor,
    /// `[B, T]` bool: position `t` predicts a supervised label `t + 1`.
    pub shift_loss_mask: Tensor,
    /// `[B, T]` per-token weights gathered from the stream's weights.
    pub example_weight: Tensor,
}

impl Batch {
    /// Rows `start..start + len` of the batch (a micro-batch).
    pub fn rows(&self, start: i64, len: i64) -> Batch {
        Batch {
            input_ids: self.input_ids.narrow(0, start, len),
            labels: self.labels.narrow(0, start, len),
            shift_loss_mask: self.shift_loss_mask.narrow(0, start, len),
            example_weight: self.example_weight.narrow(0, start, len),
        }
    }

    /// Rows `first, first + step, ...` of the batch: one rank's share of it in a job of
    /// `step` processes.
    pub fn strided(&self, first: i64, step: i64) -> Batch {
        let idx = Tensor::arange_start_step(
            first,
            self.len(),
            step,
            (Kind::Int64, self.input_ids.device()),
        );
        Batch {
            input_ids: self.input_ids.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
            shift_loss_mask: self.shift_loss_mask.index_select(0, &idx),
            example_weight: self.example_weight.index_select(0, &idx),
        }
    }

    /// Supervised label tokens (0 for none).
    pub fn supervised_tokens(&self) -> i64 {
        self.shift_loss_mask.sum(Kind::Int64).int64_value(&[])
    }

    /// Rows in the batch.
    pub fn len(&self) -> i64 {
        self.input_ids.size()[0]
    }

    /// True for a batch without rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Supervised label tokens, at least 1: the denominator of the mean loss.
    pub fn loss_denom(&self) -> f64 {
        (self.shift_loss_mask.sum(Kind::Int64).int64_value(&[]) as f64).max(1.0)
    }
}

impl Batch {
    /// The batch with the rows of zero weight taken out of the loss (labels -100, no
    /// supervised position) and its weights dropped (Bergson's `mask_padded_rows`): how a
    /// query batch is scored. Returns it with its supervised token count.
    pub fn without_padded_rows(&self) -> (Batch, i64) {
        let b = self.len();
        let live = self
            .example_weight
            .ne(0.0)
            .reshape([b, -1])
            .any_dim(1, false)
            .unsqueeze(1);
        let labels = self.labels.masked_fill(&live.logical_not(), IGNORE_INDEX);
        let shift_loss_mask = self.shift_loss_mask.logical_and(&live);
        let n = shift_loss_mask.sum(Kind::Int64).int64_value(&[]);
        let example_weight = Tensor::ones([b], (Kind::Float, self.input_ids.device()));
        (
            Batch {
                input_ids: self.input_ids.shallow_clone(),
                labels,
                shift_loss_mask,
                example_weight,
            },
            n,
        )
    }
}

/// The shape of the data weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightShape {
    /// One weight per document.
    PerDocument,
    /// One weight per (example, position); `seq_len` columns.
    PerToken {
        /// Columns of the weight grid.
        seq_len: usize,
    },
}

/// Batches of a shuffled, padded dataset and the data weights they are weighted by.
#[derive(Debug)]
pub struct DataStream {
    rows: Vec<StreamRow>,
    batch_size: usize,
    device: Device,
    /// The data weights (ones; zero for the padding's document or example).
    pub weights: Tensor,
    /// What was added to fill the last batch.
    pub padding: Padding,
    /// Documents, including the padding's one.
    pub num_docs: usize,
}

impl DataStream {
    /// The stream of `rows` (tokenised, in dataset order) as Bergson's trainer builds it.
    /// `doc_ids` gives each row's per-token documents (chunked data); `None` makes each row
    /// its own document.
    pub fn new(
        rows: &[TokenizedRow],
        doc_ids: Option<Vec<Vec<i64>>>,
        batch_size: usize,
        num_epochs: usize,
        seed: u64,
        shape: WeightShape,
        device: Device,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::input("--batch_size must be at least 1"));
        }
        if rows.is_empty() {
            return Err(Error::input(
                "the training dataset has no rows; check --dataset and --split",
            ));
        }
        let max_len = rows.iter().map(TokenizedRow::len).max().unwrap_or(0);
        let mut num_docs = rows.len();
        let doc_ids = match doc_ids {
            Some(ids) => {
                num_docs = ids
                    .iter()
                    .flatten()
                    .map(|&d| d as usize + 1)
                    .max()
                    .unwrap_or(0);
                ids
            }
            None => (0..rows.len()).map(|i| vec![i as i64; max_len]).collect(),
        };
        let base: Vec<StreamRow> = rows
            .iter()
            .zip(doc_ids)
            .enumerate()
            .map(|(i, (r, d))| StreamRow {
                input_ids: r.input_ids.clone(),
                labels: r.labels.clone().unwrap_or_else(|| r.input_ids.clone()),
                doc_ids: d,
                example_id: i as i64,
            })
            .collect();
        let mut stream_rows = Vec::with_capacity(base.len() * num_epochs.max(1));
        for epoch in 0..num_epochs.max(1) {
            for i in permutation(seed + epoch as u64, base.len()) {
                stream_rows.push(base[i].clone());
            }
        }
        Ok(Self::from_rows(
            stream_rows,
            base.len(),
            num_docs,
            batch_size,
            shape,
            device,
        ))
    }

    /// The rows in dataset order, one document each, padded like [`DataStream::new`]: how
    /// Bergson streams a query set.
    pub fn in_order(rows: &[TokenizedRow], batch_size: usize, device: Device) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::input("--batch_size must be at least 1"));
        }
        let max_len = rows.iter().map(TokenizedRow::len).max().unwrap_or(0);
        let stream_rows = rows
            .iter()
            .enumerate()
            .map(|(i, r)| StreamRow {
                input_ids: r.input_ids.clone(),
                labels: r.labels.clone().unwrap_or_else(|| r.input_ids.clone()),
                doc_ids: vec![i as i64; max_len],
                example_id: i as i64,
            })
            .collect();
        Ok(Self::from_rows(
            stream_rows,
            rows.len(),
            rows.len(),
            batch_size,
            WeightShape::PerDocument,
            device,
        ))
    }

    /// Pads `stream_rows` to whole batches and makes the weights.
    fn from_rows(
        mut stream_rows: Vec<StreamRow>,
        num_examples: usize,
        mut num_docs: usize,
        batch_size: usize,
        shape: WeightShape,
        device: Device,
    ) -> Self {
        let remainder = stream_rows.len() % batch_size;
        let mut padding = Padding::default();
        if remainder != 0 && !stream_rows.is_empty() {
            let pad = batch_size - remainder;
            let mut last = stream_rows[stream_rows.len() - 1].clone();
            last.doc_ids = vec![num_docs as i64; last.doc_ids.len()];
            last.example_id = num_examples as i64;
            num_docs += 1;
            stream_rows.extend(std::iter::repeat_n(last, pad));
            padding.num_rows = pad;
            tracing::info!(
                "padded {pad}/{} examples (weight=0) to fill the last batch",
                stream_rows.len()
            );
        }
        let opts = (Kind::Float, device);
        let weights = match shape {
            WeightShape::PerDocument => {
                let w = Tensor::ones([num_docs as i64], opts);
                if padding.num_rows > 0 {
                    let _ = w.narrow(0, num_docs as i64 - 1, 1).fill_(0.0);
                }
                w
            }
            WeightShape::PerToken { seq_len } => {
                let n = num_examples + usize::from(padding.num_rows > 0);
                let w = Tensor::ones([n as i64, seq_len as i64], opts);
                if padding.num_rows > 0 {
                    let _ = w.narrow(0, n as i64 - 1, 1).fill_(0.0);
                }
                w
            }
        };
        Self {
            rows: stream_rows,
            batch_size,
            device,
            weights,
            padding,
            num_docs,
        }
    }

    /// Replaces the weights (same shape), e.g. by a float64 copy that requires grad.
    pub fn set_weights(&mut self, weights: Tensor) -> Result<()> {
        if weights.size() != self.weights.size() {
            return Err(Error::input(format!(
                "data weights of shape {:?} do not fit this stream, which needs {:?}",
                weights.size(),
                self.weights.size()
            )));
        }
        self.weights = weights;
        Ok(())
    }

    /// Batches (full batches only, as Bergson's `DataStream`).
    pub fn len(&self) -> usize {
        self.rows.len() / self.batch_size
    }

    /// True when the stream has no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of the stream, in order (shuffled epochs, then padding).
    pub fn rows(&self) -> &[StreamRow] {
        &self.rows
    }

    /// Batch `i`: rows `[i B, (i + 1) B)`, right-padded to the longest.
    pub fn batch(&self, i: usize) -> Batch {
        let rows = &self.rows[i * self.batch_size..(i + 1) * self.batch_size];
        // At least one column, so a batch of empty documents is a batch without targets.
        let t = rows
            .iter()
            .map(|r| r.input_ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let b = rows.len();
        let mut ids = vec![0i64; b * t];
        let mut labels = vec![IGNORE_INDEX; b * t];
        let mut docs = vec![0i64; b * t];
        for (r, row) in rows.iter().enumerate() {
            ids[r * t..r * t + row.input_ids.len()].copy_from_slice(&row.input_ids);
            labels[r * t..r * t + row.labels.len()].copy_from_slice(&row.labels);
            let n = row.doc_ids.len().min(t);
            docs[r * t..r * t + n].copy_from_slice(&row.doc_ids[..n]);
        }
        let shape = [b as i64, t as i64];
        let labels = Tensor::from_slice(&labels).reshape(shape).to(self.device);
        let supervised = labels.narrow(1, 1, t as i64 - 1).ne(IGNORE_INDEX);
        let shift_loss_mask = Tensor::cat(
            &[
                supervised,
                Tensor::zeros([b as i64, 1], (Kind::Bool, self.device)),
            ],
            1,
        );
        let example_weight = if self.weights.dim() == 2 {
            let examples: Vec<i64> = rows.iter().map(|r| r.example_id).collect();
            let idx = Tensor::from_slice(&examples).to(self.device);
            self.weights.index_select(0, &idx).narrow(1, 0, t as i64)
        } else {
            let idx = Tensor::from_slice(&docs).to(self.device);
            self.weights.index_select(0, &idx).reshape(shape)
        };
        Batch {
            input_ids: Tensor::from_slice(&ids).reshape(shape).to(self.device),
            labels,
            shift_loss_mask,
            example_weight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<TokenizedRow> {
        (0..n)
            .map(|i| TokenizedRow {
                input_ids: vec![i as i64; 2 + i % 3],
                labels: None,
            })
            .collect()
    }

    #[test]
    fn epochs_are_numpy_shuffles_and_padding_has_zero_weight() {
        let s = DataStream::new(
            &rows(5),
            None,
            4,
            2,
            42,
            WeightShape::PerDocument,
            Device::Cpu,
        )
        .unwrap();
        let order: Vec<i64> = s.rows().iter().map(|r| r.example_id).collect();
        let mut want: Vec<i64> = permutation(42, 5).into_iter().map(|i| i as i64).collect();
        want.extend(permutation(43, 5).into_iter().map(|i| i as i64));
        assert_eq!(&order[..10], &want[..]);
        // 10 rows + 2 padding rows (fresh doc 5, fresh example 5), three batches.
        assert_eq!((s.len(), s.padding.num_rows, s.num_docs), (3, 2, 6));
        assert_eq!(order[10..], [5, 5]);
        assert_eq!(s.weights.double_value(&[5]), 0.0);
        let b = s.batch(2);
        let w: Vec<f32> = Vec::try_from(b.example_weight.select(1, 0)).unwrap();
        assert_eq!(w[2..], [0.0, 0.0]);
        // Right padding: labels -100 and no loss past each row.
        let last = &s.rows()[8];
        let t = b.input_ids.size()[1];
        assert_eq!(
            b.labels.int64_value(&[0, t - 1]) == IGNORE_INDEX,
            last.input_ids.len() < t as usize
        );
    }

    #[test]
    fn weights_of_another_shape_are_refused() {
        let mut s = DataStream::new(
            &rows(4),
            None,
            2,
            1,
            0,
            WeightShape::PerDocument,
            Device::Cpu,
        )
        .unwrap();
        let e = s
            .set_weights(Tensor::ones([5], (Kind::Double, Device::Cpu)))
            .unwrap_err();
        assert!(
            e.to_string().contains("[5]") && e.to_string().contains("[4]"),
            "{e}"
        );
        s.set_weights(Tensor::ones([4], (Kind::Double, Device::Cpu)))
            .unwrap();
        let s = DataStream::new(
            &rows(3),
            None,
            2,
            1,
            0,
            WeightShape::PerToken { seq_len: 4 },
            Device::Cpu,
        )
        .unwrap();
        // 3 examples + the padding's row, 4 columns; per-token weights are gathered by example.
        assert_eq!(s.weights.size(), [4, 4]);
        assert_eq!(s.batch(1).example_weight.size()[0], 2);
    }

    #[test]
    fn zero_batch_size_is_refused() {
        let e = DataStream::new(
            &rows(3),
            None,
            0,
            1,
            0,
            WeightShape::PerDocument,
            Device::Cpu,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--batch_size"), "{e}");
    }
}
