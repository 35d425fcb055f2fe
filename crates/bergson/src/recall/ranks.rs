//! Where the gold statements of a question rank in its score column, and the recall metrics
//! Bergson derives from those ranks.

/// 1-indexed ranks of the `gold` rows when `scores` is sorted descending, ties broken by row
/// order (a stable sort), as Bergson's `gold_ranks`: rows scoring strictly higher, plus equal
/// rows before it, plus one. One pass over the column for all gold rows at once.
pub fn gold_ranks(scores: &[f64], gold: &[usize]) -> Vec<usize> {
    let gold_values: Vec<f64> = gold.iter().map(|&g| scores[g]).collect();
    let mut ranks = vec![1usize; gold.len()];
    for (row, &v) in scores.iter().enumerate() {
        for ((rank, &g), &gv) in ranks.iter_mut().zip(gold).zip(&gold_values) {
            if v > gv || (v == gv && row < g) {
                *rank += 1;
            }
        }
    }
    ranks
}

/// One question's recall numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuestionRecall {
    /// Best rank of any gold statement (1-indexed).
    pub first_gold_rank: usize,
    /// `1 / first_gold_rank`.
    pub reciprocal_rank: f64,
    /// Whether a gold statement is in the top `k`.
    pub hit: bool,
    /// Fraction of the gold statements in the top `k`.
    pub strict_recall: f64,
}

impl QuestionRecall {
    /// The numbers for gold `ranks` (non-empty) at cutoff `k`.
    pub fn from_ranks(ranks: &[usize], k: usize) -> Self {
        let first = ranks.iter().copied().min().unwrap_or(usize::MAX);
        let in_top = ranks.iter().filter(|&&r| r <= k).count();
        QuestionRecall {
            first_gold_rank: first,
            reciprocal_rank: 1.0 / first as f64,
            hit: first <= k,
            strict_recall: in_top as f64 / ranks.len() as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank by a stable descending sort: the definition `gold_ranks` must equal.
    fn ranks_by_sort(scores: &[f64], gold: &[usize]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap());
        gold.iter()
            .map(|g| order.iter().position(|o| o == g).unwrap() + 1)
            .collect()
    }

    #[test]
    fn ranks_equal_a_stable_descending_sort_with_ties() {
        let scores = [0.5, 2.0, 0.5, -1.0, 2.0, 0.5, 3.0];
        let gold = [0, 2, 4, 5, 3, 6];
        assert_eq!(gold_ranks(&scores, &gold), ranks_by_sort(&scores, &gold));
        assert_eq!(gold_ranks(&scores, &[2]), vec![5]);
    }

    #[test]
    fn metrics_follow_the_ranks() {
        let r = QuestionRecall::from_ranks(&[4, 12, 2], 3);
        assert_eq!(r.first_gold_rank, 2);
        assert_eq!(r.reciprocal_rank, 0.5);
        assert!(r.hit);
        assert!((r.strict_recall - 1.0 / 3.0).abs() < 1e-15);
        assert!(!QuestionRecall::from_ranks(&[4], 3).hit);
    }
}
