//! `--chunk_length`: documents concatenated into one token stream (each followed by EOS) and
//! cut into fixed-length rows, as Bergson's `tokenize_and_chunk` does, including which tail
//! tokens it drops.
//!
//! Bergson chunks with `datasets.map`, which does not carry tokens between its batches: the
//! kept documents are split into `num_proc` contiguous shards, each shard into batches of
//! `bs` documents, and a batch's tokens that do not fill a whole chunk are dropped. The shard
//! and batch sizes depend on the CPU count (`os.cpu_count()`), so they are computed the same
//! way here.

/// Chunked rows: token ids and, per token, the dataset row it came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chunks {
    /// `[chunks][chunk_length]` token ids.
    pub input_ids: Vec<Vec<i64>>,
    /// `[chunks][chunk_length]` original row index of each token (its EOS included).
    pub doc_ids: Vec<Vec<i64>>,
}

/// Python's `str.strip() != ""`: whether `text` has a character that is not whitespace in
/// Python's sense (Unicode White_Space plus the ASCII separators U+001C..U+001F).
pub fn has_content(text: &str) -> bool {
    text.chars()
        .any(|c| !(c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)))
}

/// The number of logical CPUs, as Python's `os.cpu_count()` (online processors).
pub fn cpu_count() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Bergson's worker count and batch size for `docs` kept documents: `(num_proc, bs)`.
pub fn map_layout(docs: usize, chunk_length: usize, cpus: usize) -> (usize, usize) {
    let num_proc = (cpus / 2).min((docs / 256).max(1));
    let num_proc = num_proc.min((docs / (chunk_length * 4)).max(1)).max(1);
    let bs = 10_000.min(docs / num_proc);
    (num_proc, bs)
}

/// Chunks `docs` (`(original row, token ids)` of the kept documents, in order) into rows of
/// `chunk_length` tokens, with `eos` after every document, laid out over `num_proc` shards
/// of batches of `bs` documents (`bs` 0: one batch per shard).
pub fn chunk_documents(
    docs: &[(usize, Vec<i64>)],
    eos: i64,
    chunk_length: usize,
    num_proc: usize,
    bs: usize,
) -> Chunks {
    let mut out = Chunks::default();
    for shard in contiguous_shards(docs.len(), num_proc.max(1)) {
        let shard = &docs[shard];
        let batch = if bs == 0 { shard.len().max(1) } else { bs };
        for group in shard.chunks(batch) {
            let mut tokens = Vec::new();
            let mut owners = Vec::new();
            for (row, ids) in group {
                tokens.extend_from_slice(ids);
                tokens.push(eos);
                owners.extend(std::iter::repeat_n(*row as i64, ids.len() + 1));
            }
            let whole = tokens.len() / chunk_length * chunk_length;
            out.input_ids
                .extend(tokens[..whole].chunks(chunk_length).map(<[i64]>::to_vec));
            out.doc_ids
                .extend(owners[..whole].chunks(chunk_length).map(<[i64]>::to_vec));
        }
    }
    out
}

/// `datasets.Dataset.shard(n, i, contiguous=True)` for every `i`: the first `len % n` shards
/// hold one extra row.
fn contiguous_shards(len: usize, n: usize) -> Vec<std::ops::Range<usize>> {
    let (div, rem) = (len / n, len % n);
    (0..n)
        .map(|i| {
            let start = div * i + i.min(rem);
            start..start + div + usize::from(i < rem)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_dropped_per_batch_and_eos_ends_every_document() {
        let docs = vec![(0, vec![1, 2, 3]), (2, vec![4, 5]), (3, vec![6])];
        // One batch: stream 1 2 3 E 4 5 E 6 E -> two chunks of 4, tail [E] dropped.
        let c = chunk_documents(&docs, 9, 4, 1, 0);
        assert_eq!(c.input_ids, vec![vec![1, 2, 3, 9], vec![4, 5, 9, 6]]);
        assert_eq!(c.doc_ids, vec![vec![0, 0, 0, 0], vec![2, 2, 2, 3]]);
        // Batches of two documents: [1 2 3 E 4 5 E] -> one chunk; [6 E] -> none.
        let c = chunk_documents(&docs, 9, 4, 1, 2);
        assert_eq!(c.input_ids, vec![vec![1, 2, 3, 9]]);
        // Two shards (2 + 1 documents), each one batch.
        let c = chunk_documents(&docs, 9, 3, 2, 0);
        assert_eq!(c.input_ids, vec![vec![1, 2, 3], vec![9, 4, 5]]);
    }

    #[test]
    fn layout_follows_bergson() {
        // Small datasets: one process, one batch of everything.
        assert_eq!(map_layout(10, 16, 2), (1, 10));
        assert_eq!(map_layout(0, 16, 64), (1, 0));
        // 3000 documents, 32 CPUs, chunks of 64: min(16, 11) = 11, then min(11, 11) = 11.
        assert_eq!(map_layout(3000, 64, 32), (11, 272));
        // Big datasets: batches capped at 10,000 documents.
        assert_eq!(map_layout(100_000, 16, 2), (1, 10_000));
    }

    #[test]
    fn shards_are_contiguous_with_the_remainder_first() {
        assert_eq!(contiguous_shards(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(contiguous_shards(2, 3), vec![0..1, 1..2, 2..2]);
    }

    #[test]
    fn whitespace_as_python_strips_it() {
        assert!(!has_content(" \t\n\u{a0}\u{3000}\u{1c}\u{1f}"));
        assert!(has_content(" a "));
        assert!(!has_content(""));
    }
}
