//! SmolLM3: the Llama decoder with rotation switched off on every `no_rope_layer_interval`-th
//! layer (`no_rope_layers`), and an optional sliding window on the layers without it.

use super::config::ConfigJson;
use super::llama::{positive_window, sliding_layer_types, DecoderConfig};
use crate::Result;

/// `SmolLM3Config.default_theta`.
const DEFAULT_THETA: f64 = 2_000_000.0;

/// SmolLM3's config.json as decoder settings (transformers' `SmolLM3Config` defaults).
pub fn config(cfg: &ConfigJson) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::common(cfg, "smollm3")?;
    let has_theta = cfg.float(&["rope_theta"])?.is_some()
        || cfg
            .object(&["rope_parameters"])?
            .is_some_and(|d| d.get("rope_theta").is_some_and(|t| !t.is_null()));
    if !has_theta {
        c.rope.theta = DEFAULT_THETA;
    }
    // `SmolLM3Config` turns an explicit null into one key/value head per query head.
    if !cfg.is_null("num_key_value_heads") {
        c.default_kv_heads(cfg, 4)?;
    }
    if !cfg.has("pad_token_id") {
        c.pad_token_id = Some(128004);
    }
    c.tie_word_embeddings = super::tie_word_embeddings(cfg, true)?;
    c.read_attention_bias(cfg)?;
    c.mlp_bias = cfg.bool(&["mlp_bias"])?.unwrap_or(false);
    let n = c.num_layers as usize;
    let rotates: Vec<bool> = match cfg.value("no_rope_layers") {
        Some(v) => {
            let flags = v.as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_i64().map(|i| i != 0).or_else(|| x.as_bool()))
                    .collect::<Option<Vec<_>>>()
            });
            match flags {
                Some(f) if f.len() == n => f,
                _ => {
                    return Err(cfg.error(format!(
                        "no_rope_layers must list one 0 or 1 per layer ({n}); fix config.json"
                    )))
                }
            }
        }
        None => {
            let interval = cfg.int(&["no_rope_layer_interval"])?.unwrap_or(4);
            if interval <= 0 {
                return Err(cfg.error(format!(
                    "no_rope_layer_interval {interval} must be positive; fix config.json"
                )));
            }
            (0..n as i64).map(|i| (i + 1) % interval != 0).collect()
        }
    };
    let window = match cfg.bool(&["use_sliding_window"])?.unwrap_or(false) {
        true => positive_window(cfg, cfg.int(&["sliding_window"])?)?,
        false => None,
    };
    let sliding = sliding_layer_types(cfg, n as i64)?
        .unwrap_or_else(|| rotates.iter().map(|&r| window.is_some() && !r).collect());
    c.sliding_windows = sliding.iter().map(|&s| window.filter(|_| s)).collect();
    c.rope_layers = Some(rotates);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DIMS: &str = r#""vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "max_position_embeddings": 2048"#;

    fn parse(text: &str) -> Result<DecoderConfig> {
        config(&ConfigJson::parse(text, Path::new("config.json")).unwrap())
    }

    #[test]
    fn defaults_and_spellings() {
        let c = parse(&format!("{{{DIMS}}}")).unwrap();
        assert_eq!(c.rope_layers, Some(vec![true, true, true, false]));
        assert_eq!((c.rope.theta, c.num_kv_heads), (DEFAULT_THETA, 4));
        assert_eq!(c.sliding_windows, vec![None; 4]);
        assert!(c.tie_word_embeddings);
        let c = parse(&format!(
            r#"{{{DIMS}, "no_rope_layers": [1, 0, 1, 1], "use_sliding_window": true, "sliding_window": 8, "rope_theta": 10000}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_layers, Some(vec![true, false, true, true]));
        assert_eq!(c.sliding_windows, vec![None, Some(8), None, None]);
        assert_eq!(c.rope.theta, 10_000.0);
        let e = parse(&format!(r#"{{{DIMS}, "no_rope_layers": [1, 0]}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no_rope_layers must list"), "{e}");
    }
}
