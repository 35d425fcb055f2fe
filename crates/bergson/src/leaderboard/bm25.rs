//! BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond",
//! eq. 3.15 with the non-negative idf `ln(1 + (N - n + 0.5) / (n + 0.5))` of Lucene): a lexical
//! baseline that scores each training document against each query by the query's words it
//! contains, no model involved. Bergson's leaderboard lists it (LDS 0.220 on WikiText).

use std::collections::HashMap;

/// Term-frequency saturation.
pub const K1: f64 = 1.5;
/// Length normalisation.
pub const B: f64 = 0.75;

/// Lower-cased alphanumeric words.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// BM25 scores `[documents][queries]` (row-major; higher = more relevant) of every document
/// against every query.
pub fn bm25_scores(documents: &[String], queries: &[String]) -> Vec<f64> {
    let docs: Vec<HashMap<String, usize>> = documents
        .iter()
        .map(|d| {
            let mut tf = HashMap::new();
            for w in words(d) {
                *tf.entry(w).or_insert(0) += 1;
            }
            tf
        })
        .collect();
    let lengths: Vec<f64> = docs
        .iter()
        .map(|tf| tf.values().sum::<usize>() as f64)
        .collect();
    let n = docs.len() as f64;
    let avg_len = (lengths.iter().sum::<f64>() / n.max(1.0)).max(f64::MIN_POSITIVE);
    let mut df: HashMap<&str, usize> = HashMap::new();
    for tf in &docs {
        for w in tf.keys() {
            *df.entry(w.as_str()).or_insert(0) += 1;
        }
    }
    let idf = |w: &str| {
        let m = df.get(w).copied().unwrap_or(0) as f64;
        (1.0 + (n - m + 0.5) / (m + 0.5)).ln()
    };
    let query_words: Vec<Vec<String>> = queries.iter().map(|q| words(q)).collect();
    let mut out = vec![0.0; docs.len() * queries.len()];
    for (d, tf) in docs.iter().enumerate() {
        let norm = K1 * (1.0 - B + B * lengths[d] / avg_len);
        for (q, qw) in query_words.iter().enumerate() {
            out[d * queries.len() + q] = qw
                .iter()
                .filter_map(|w| tf.get(w).map(|&f| (w, f as f64)))
                .map(|(w, f)| idf(w) * f * (K1 + 1.0) / (f + norm))
                .sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the formula evaluated by hand for a three-document corpus.
    #[test]
    fn matches_the_formula_by_hand() {
        let docs = vec![
            "the cat sat".to_string(),
            "the dog".to_string(),
            "a cat and a cat".to_string(),
        ];
        let s = bm25_scores(&docs, &["Cat?".to_string(), "bird".to_string()]);
        let avg = (3.0 + 2.0 + 5.0) / 3.0;
        let idf_cat = (1.0f64 + (3.0 - 2.0 + 0.5) / (2.0 + 0.5)).ln();
        let tf_part = |f: f64, len: f64| f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * len / avg));
        let want = [
            idf_cat * tf_part(1.0, 3.0),
            0.0,
            idf_cat * tf_part(2.0, 5.0),
        ];
        for d in 0..3 {
            assert!(
                (s[d * 2] - want[d]).abs() < 1e-12,
                "{d}: {} vs {}",
                s[d * 2],
                want[d]
            );
            assert_eq!(s[d * 2 + 1], 0.0);
        }
        // More occurrences score higher despite the longer document here.
        assert!(s[4] > s[0]);
    }
}
