//! Per-token heat maps: which token each row of a per-token store scores, and the document's
//! text cut at token boundaries.
//!
//! A document of `L` tokens has `L - 1` rows. With `token_influence: gradient` (Bergson's
//! default) row `t` is the gradient at input position `t`, i.e. token `t`'s effect on the loss
//! of every later token, so it colours token `t` and the last token has no row. With `output`,
//! row `t` is the loss on predicting token `t + 1`, so it colours token `t + 1` and the first
//! token has no row.

use super::page::{HeatMap, HeatSpan, TokenScore};
use crate::data::tokenize::Tokenizer;

/// Which token a row scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenInfluence {
    /// Row `t` colours token `t`.
    Gradient,
    /// Row `t` colours token `t + 1`.
    Output,
}

impl TokenInfluence {
    /// Parses `score_cfg.token_influence`.
    pub fn parse(s: &str) -> Self {
        if s == "output" {
            TokenInfluence::Output
        } else {
            TokenInfluence::Gradient
        }
    }

    /// The row scoring token `t` of a document with `rows` rows.
    fn row_of(self, t: usize, rows: usize) -> Option<usize> {
        let row = match self {
            TokenInfluence::Gradient => t,
            TokenInfluence::Output => t.checked_sub(1)?,
        };
        (row < rows).then_some(row)
    }
}

/// The heat map of a document with token `ids` and per-row scores `rows` (`None` where not
/// written), shown up to about `max_chars` characters. `None` when the rows do not fit the
/// tokens (`ids.len() - 1` of them) or a token cannot be decoded.
pub fn heat_map(
    ids: &[u32],
    rows: &[Option<f32>],
    influence: TokenInfluence,
    tokenizer: &Tokenizer,
    max_chars: usize,
) -> Option<HeatMap> {
    if rows.len() != ids.len().saturating_sub(1) {
        return None;
    }
    // Decoding token by token (not each id alone) keeps byte-level pieces of one character
    // together and applies the decoder's spacing rules as the whole text would.
    let mut stream = tokenizer.inner().decode_stream(false);
    let mut spans = Vec::new();
    let mut chars = 0;
    let mut start = 0;
    let mut score = None::<TokenScore>;
    for (t, &id) in ids.iter().enumerate() {
        let token = match influence.row_of(t, rows.len()) {
            None => TokenScore::NoRow,
            Some(r) => rows[r].map_or(TokenScore::Missing, |v| TokenScore::Scored(v.into())),
        };
        score = Some(merge(score, token));
        let Some(text) = stream.step(id).ok()? else {
            continue;
        };
        chars += text.chars().count();
        spans.push(HeatSpan {
            text,
            tokens: start..t + 1,
            score: score.take().expect("set above"),
        });
        start = t + 1;
        if chars >= max_chars {
            break;
        }
    }
    Some(HeatMap {
        spans,
        omitted_tokens: ids.len() - start,
    })
}

/// The score of a span covering tokens with scores `acc` and `next`: scores add up (rows sum to
/// the document's score); a missing row makes the span missing.
fn merge(acc: Option<TokenScore>, next: TokenScore) -> TokenScore {
    use TokenScore::*;
    match (acc, next) {
        (None, s) => s,
        (Some(Missing), _) | (_, Missing) => Missing,
        (Some(Scored(a)), Scored(b)) => Scored(a + b),
        (Some(Scored(a)), NoRow) | (Some(NoRow), Scored(a)) => Scored(a),
        (Some(NoRow), NoRow) => NoRow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    fn tokenizer() -> Tokenizer {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/gpt_neox");
        Tokenizer::from_dir(dir).unwrap()
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer
            .inner()
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec()
    }

    /// The spans spell the document, cover every token once, and place row t on token t
    /// (gradient) or t + 1 (output); multi-byte characters split over tokens stay whole.
    #[test]
    fn spans_spell_the_text_and_align_rows() {
        let tok = tokenizer();
        let text = "Größenwahn: naïve café.";
        let ids = ids(&tok, text);
        assert!(ids.len() > text.chars().count() / 2, "{ids:?}");
        let rows: Vec<Option<f32>> = (0..ids.len() - 1).map(|r| Some(r as f32 + 1.0)).collect();
        for influence in [TokenInfluence::Gradient, TokenInfluence::Output] {
            let map = heat_map(&ids, &rows, influence, &tok, 10_000).unwrap();
            let spelled: String = map.spans.iter().map(|s| s.text.as_str()).collect();
            assert_eq!(spelled, text);
            assert_eq!(map.omitted_tokens, 0);
            let mut next = 0;
            let mut total = 0.0;
            for span in &map.spans {
                assert_eq!(span.tokens.start, next);
                next = span.tokens.end;
                let want: f64 = span
                    .tokens
                    .clone()
                    .filter_map(|t| influence.row_of(t, rows.len()))
                    .map(|r| rows[r].unwrap() as f64)
                    .sum();
                match span.score {
                    TokenScore::Scored(v) => assert_eq!(v, want),
                    TokenScore::NoRow => assert_eq!(want, 0.0),
                    TokenScore::Missing => panic!("all rows are written"),
                }
                total += want;
            }
            assert_eq!(next, ids.len());
            let all: f64 = rows.iter().map(|r| r.unwrap() as f64).sum();
            assert_eq!(total, all);
        }
        let gradient = heat_map(&ids, &rows, TokenInfluence::Gradient, &tok, 10_000).unwrap();
        assert_eq!(gradient.spans.last().unwrap().score, TokenScore::NoRow);
        let output = heat_map(&ids, &rows, TokenInfluence::Output, &tok, 10_000).unwrap();
        assert_eq!(output.spans[0].score, TokenScore::NoRow);
    }

    #[test]
    fn unwritten_rows_are_missing_and_long_texts_are_cut() {
        let tok = tokenizer();
        let ids = ids(&tok, "abcdefghij");
        let mut rows: Vec<Option<f32>> = vec![Some(1.0); ids.len() - 1];
        rows[2] = None;
        let map = heat_map(&ids, &rows, TokenInfluence::Gradient, &tok, 4).unwrap();
        let shown: String = map.spans.iter().map(|s| s.text.as_str()).collect();
        assert!(shown.len() >= 4 && shown.len() < 10, "{shown}");
        assert_eq!(
            map.omitted_tokens,
            ids.len() - map.spans.last().unwrap().tokens.end
        );
        let third = map.spans.iter().find(|s| s.tokens.contains(&2)).unwrap();
        assert_eq!(third.score, TokenScore::Missing);
        assert!(heat_map(&ids, &rows[1..], TokenInfluence::Gradient, &tok, 4).is_none());
    }
}
