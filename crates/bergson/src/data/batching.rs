//! Packing documents into batches and padding them, exactly as Bergson 2.5.1
//! (`bergson/data.py`: `allocate_batches` / `_allocate_batches_world`, `pad_and_tensor`).
//!
//! Packing, for a token budget `N` per batch (`max length in batch * batch size <= N`):
//! 1. documents with fewer than 2 tokens are dropped (no next-token label; their index rows
//!    stay zero);
//! 2. the rest are sorted by length, longest first (stable: ties keep dataset order), and
//!    packed greedily, the first document of a batch fixing its padded length;
//! 3. if there are fewer batches than workers, the largest batches are split (a max-heap with
//!    the exact layout of Python's `heapq`) until every worker can get one;
//! 4. singletons are split off non-singleton batches until the batch count is a multiple of
//!    the world size;
//! 5. batch `b` goes to worker `b % world_size`, and each worker's list is shuffled with
//!    `random.seed(42); random.shuffle(...)`.

use super::pyrandom::PyRandom;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// The seed Bergson passes to `allocate_batches`.
pub const SHUFFLE_SEED: i128 = 42;

/// Per-rank lists of batches of dataset indices: `allocation[rank][batch]`.
pub type Allocation = Vec<Vec<Vec<usize>>>;

/// Number of documents `allocate_batches` skips (fewer than 2 tokens); Bergson prints
/// "Skipping {n} documents with fewer than 2 tokens (no valid next-token labels)." on rank 0.
pub fn count_skipped(lengths: &[usize]) -> usize {
    lengths.iter().filter(|&&l| l < 2).count()
}

/// Packs documents of the given token `lengths` into batches for every rank of `world_size`
/// (Bergson's `_allocate_batches_world(lengths, token_batch_size, world_size, seed=42,
/// max_batch_size=max_batch_size)`).
pub fn allocate_batches(
    lengths: &[usize],
    token_batch_size: usize,
    max_batch_size: Option<usize>,
    world_size: usize,
) -> Result<Allocation> {
    if world_size == 0 {
        return Err(Error::input("the world size must be at least 1"));
    }
    let mut docs: Vec<(usize, usize)> = lengths
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, l)| l >= 2)
        .collect();
    // Stable sort, longest first: ties keep dataset order, as Python's sorted(reverse=True).
    docs.sort_by_key(|d| std::cmp::Reverse(d.1));
    if docs.len() < world_size {
        return Err(Error::input(format!(
            "only {} documents have 2 or more tokens, fewer than the {world_size} workers; use \
             fewer processes or a bigger dataset",
            docs.len()
        )));
    }
    if let Some(&(index, length)) = docs.first() {
        if length > token_batch_size {
            return Err(Error::input(format!(
                "document {index} has {length} tokens, more than --token_batch_size \
                 {token_batch_size}; pass --truncation to cut documents to the token batch size, \
                 or a --token_batch_size of at least {length}"
            )));
        }
    }

    // 1) Greedy packing under cost = (length of the batch's first document) * batch size.
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for &(idx, length) in &docs {
        if cur.is_empty() {
            cur.push(idx);
            continue;
        }
        let cost = length.max(lengths[cur[0]]).saturating_mul(cur.len() + 1);
        let within_count = max_batch_size.is_none_or(|m| cur.len() < m);
        if cost <= token_batch_size && within_count {
            cur.push(idx);
        } else {
            batches.push(std::mem::replace(&mut cur, vec![idx]));
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }

    // 2) Every worker needs at least one batch: split the largest batches.
    if batches.len() < world_size {
        batches = split_largest(batches, world_size)?;
    }

    // 3) Pad the batch count to a multiple of the world size with split-off singletons.
    let target = batches.len().div_ceil(world_size) * world_size;
    let mut i = 0;
    while batches.len() < target && i < batches.len() {
        let at = i % batches.len();
        if batches[at].len() == 1 {
            i += 1;
            continue;
        }
        if let Some(last) = batches[at].pop() {
            batches.push(vec![last]);
        }
        i += 1;
    }
    if batches.len() != target {
        return Err(Error::input(format!(
            "cannot split {} documents into a number of batches divisible by the world size \
             {world_size}; use a different --token_batch_size or number of processes",
            docs.len()
        )));
    }

    // 4) Round-robin assignment, 5) per-rank shuffle with the same seed on every rank.
    let mut allocation: Allocation = vec![Vec::new(); world_size];
    for (b, batch) in batches.into_iter().enumerate() {
        allocation[b % world_size].push(batch);
    }
    for rank in allocation.iter_mut() {
        PyRandom::new(SHUFFLE_SEED).shuffle(rank);
    }
    Ok(allocation)
}

/// Heap entry ordered as Python's tuple `(-len(batch), counter)`.
type HeapItem = (isize, usize, Vec<usize>);

fn heap_less(a: &HeapItem, b: &HeapItem) -> bool {
    (a.0, a.1) < (b.0, b.1)
}

/// `heapq._siftdown`: move the item at `pos` up towards `start`.
fn sift_down(heap: &mut [HeapItem], start: usize, mut pos: usize) {
    while pos > start {
        let parent = (pos - 1) >> 1;
        if heap_less(&heap[pos], &heap[parent]) {
            heap.swap(pos, parent);
            pos = parent;
        } else {
            break;
        }
    }
}

/// `heapq._siftup`: bubble the smaller child up to the leaf, then sift the item back down.
fn sift_up(heap: &mut [HeapItem], mut pos: usize) {
    let end = heap.len();
    let start = pos;
    let mut child = 2 * pos + 1;
    while child < end {
        let right = child + 1;
        if right < end && !heap_less(&heap[child], &heap[right]) {
            child = right;
        }
        heap.swap(pos, child);
        pos = child;
        child = 2 * pos + 1;
    }
    sift_down(heap, start, pos);
}

fn heap_push(heap: &mut Vec<HeapItem>, item: HeapItem) {
    heap.push(item);
    let last = heap.len() - 1;
    sift_down(heap, 0, last);
}

fn heap_pop(heap: &mut Vec<HeapItem>) -> Option<HeapItem> {
    let last = heap.pop()?;
    if heap.is_empty() {
        return Some(last);
    }
    let top = std::mem::replace(&mut heap[0], last);
    sift_up(heap, 0);
    Some(top)
}

/// Splits the largest batches (last document into a singleton) until there are `world_size`
/// batches; the result keeps the heap's array order, as Bergson's `[b for _, _, b in heap]`.
fn split_largest(batches: Vec<Vec<usize>>, world_size: usize) -> Result<Vec<Vec<usize>>> {
    let mut heap: Vec<HeapItem> = Vec::new();
    let mut counter = 0usize;
    for batch in batches {
        heap_push(&mut heap, (-(batch.len() as isize), counter, batch));
        counter += 1;
    }
    while heap.len() < world_size {
        let Some((_, _, mut big)) = heap_pop(&mut heap) else {
            break;
        };
        if big.len() <= 1 {
            return Err(Error::input(format!(
                "not enough documents to give each of the {world_size} workers a batch; use \
                 fewer processes"
            )));
        }
        let single = big.pop().into_iter().collect::<Vec<_>>();
        heap_push(&mut heap, (-(big.len() as isize), counter, big));
        counter += 1;
        heap_push(&mut heap, (-1, counter, single));
        counter += 1;
    }
    Ok(heap.into_iter().map(|(_, _, b)| b).collect())
}

/// Right-pads a batch as Bergson's `pad_and_tensor(..., sync_max_len=False)`: `input_ids`
/// `[N, S]` padded with token id 0, `labels` `[N, S]` padded with -100 (labels are the
/// input ids when `labels` is `None`), both int64 on the CPU; `S` is the longest document.
pub fn pad_batch(input_ids: &[&[i64]], labels: Option<&[&[i64]]>) -> Result<(Tensor, Tensor)> {
    let labels = labels.unwrap_or(input_ids);
    if input_ids.is_empty() {
        return Err(Error::input("cannot pad an empty batch"));
    }
    if labels.len() != input_ids.len() {
        return Err(Error::input(format!(
            "a batch has {} input_ids rows but {} labels rows",
            input_ids.len(),
            labels.len()
        )));
    }
    let n = input_ids.len();
    let s = input_ids.iter().map(|d| d.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; n * s];
    let mut lab = vec![-100i64; n * s];
    for (row, (doc, lbl)) in input_ids.iter().zip(labels).enumerate() {
        if lbl.len() > s {
            return Err(Error::input(format!(
                "labels row {row} of a batch has {} entries, more than the batch's longest \
                 input_ids ({s}); the labels column must match input_ids",
                lbl.len()
            )));
        }
        ids[row * s..row * s + doc.len()].copy_from_slice(doc);
        lab[row * s..row * s + lbl.len()].copy_from_slice(lbl);
    }
    let shape = [n as i64, s as i64];
    let ids = Tensor::from_slice(&ids).f_reshape(shape)?;
    let lab = Tensor::from_slice(&lab).f_reshape(shape)?;
    Ok((ids, lab))
}

/// Bergson's `collection_mask` for a padded batch: `[N, S]` bool, true at every real position
/// but each document's last (`t + 1 < length`).
pub fn collection_mask(lengths: &[usize], seq_len: usize) -> Result<Tensor> {
    let mask: Vec<bool> = lengths
        .iter()
        .flat_map(|&len| (0..seq_len).map(move |t| t + 1 < len))
        .collect();
    Ok(Tensor::from_slice(&mask)
        .f_reshape([lengths.len() as i64, seq_len as i64])?
        .f_to_kind(Kind::Bool)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_pops_in_python_order() {
        // Largest first, ties by insertion counter.
        let mut heap = Vec::new();
        for (c, len) in [3usize, 5, 5, 1, 3].into_iter().enumerate() {
            heap_push(&mut heap, (-(len as isize), c, vec![c]));
        }
        let order: Vec<usize> = std::iter::from_fn(|| heap_pop(&mut heap).map(|x| x.1)).collect();
        assert_eq!(order, vec![1, 2, 0, 4, 3]);
    }

    #[test]
    fn too_long_document_names_index_and_fix() {
        let err = allocate_batches(&[3, 40, 5], 16, None, 1).unwrap_err();
        let msg = err.to_string();
        assert!(err.is_user_error());
        assert!(msg.contains("document 1 has 40 tokens"), "{msg}");
        assert!(
            msg.contains("--truncation") && msg.contains("--token_batch_size"),
            "{msg}"
        );
    }
}
