//! Which Linear modules are collected, and the gradient blocks (columns of the index) they give.

use glob::Pattern;

use crate::config::AttentionConfig;
use crate::models::LinearInfo;
use crate::{Error, Result};

/// A collected module.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Module name relative to the base model.
    pub name: String,
    /// Input features I.
    pub in_features: i64,
    /// Output features O.
    pub out_features: i64,
    /// Whether its bias gradient is appended as an extra input column.
    pub collect_bias: bool,
    /// Head split (`--split_attention_modules`), if any.
    pub heads: Option<AttentionConfig>,
}

/// `fnmatch.fnmatchcase` semantics: `*` and `?` cross dots, `[seq]`/`[!seq]` classes.
fn fnmatch(pattern: &str) -> Result<Pattern> {
    Pattern::new(pattern).map_err(|e| Error::input(format!("bad module glob '{pattern}': {e}")))
}

/// Selects targets from a model's Linear modules as Bergson's `discover_targets` does, in the
/// model's module order: `modules` (ours; empty = all) keeps exactly the names matching one of
/// its globs and refuses a glob that matches nothing; `filter_modules` (comma-separated globs)
/// then excludes names. `include_bias` collects biases of modules that have one.
pub fn discover_targets(
    linears: &[LinearInfo],
    modules: &[String],
    filter_modules: Option<&str>,
    include_bias: bool,
) -> Result<Vec<Target>> {
    let keep: Vec<Pattern> = modules
        .iter()
        .map(|m| fnmatch(m.trim()))
        .collect::<Result<_>>()?;
    for (glob, text) in keep.iter().zip(modules) {
        if !linears.iter().any(|l| glob.matches(&l.name)) {
            return Err(Error::input(format!(
                "--modules '{text}' matches no module of this model; its Linear modules are: {}",
                preview(linears)
            )));
        }
    }
    let drop: Vec<Pattern> = filter_modules
        .map(|f| {
            f.split(',')
                .map(|p| fnmatch(p.trim()))
                .collect::<Result<_>>()
        })
        .transpose()?
        .unwrap_or_default();
    let targets: Vec<Target> = linears
        .iter()
        .filter(|l| keep.is_empty() || keep.iter().any(|g| g.matches(&l.name)))
        .filter(|l| !drop.iter().any(|g| g.matches(&l.name)))
        .map(|l| Target {
            name: l.name.clone(),
            in_features: l.in_features,
            out_features: l.out_features,
            collect_bias: include_bias && l.has_bias,
            heads: None,
        })
        .collect();
    if targets.is_empty() {
        return Err(Error::input(format!(
            "no module left to collect: --filter_modules '{}' excludes every module ({}); narrow the globs",
            filter_modules.unwrap_or(""),
            preview(linears)
        )));
    }
    Ok(targets)
}

/// Applies `--split_attention_modules` with one shared head layout.
pub fn split_heads(targets: &mut [Target], names: &[String], heads: AttentionConfig) -> Result<()> {
    for name in names {
        let Some(t) = targets.iter_mut().find(|t| &t.name == name) else {
            return Err(Error::input(format!(
                "--split_attention_modules '{name}' is not a collected module; collected: {}",
                targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if heads.num_heads <= 0
            || heads.head_size <= 0
            || heads.num_heads * heads.head_size != t.out_features
        {
            return Err(Error::input(format!(
                "{name}: --num_heads {} × --head_size {} must equal its {} output features",
                heads.num_heads, heads.head_size, t.out_features
            )));
        }
        if heads.head_dim != 2 {
            return Err(Error::input(format!(
                "--head_dim {} is not supported: heads are cut along the output features, axis 2 of [N, S, O]; use --head_dim 2",
                heads.head_dim
            )));
        }
        t.heads = Some(heads);
    }
    Ok(())
}

fn preview(linears: &[LinearInfo]) -> String {
    let names: Vec<&str> = linears.iter().map(|l| l.name.as_str()).collect();
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, ... ({} in all)", names[..8].join(", "), names.len())
    }
}

impl Target {
    /// The gradient blocks this module contributes, as (name, out features): itself, or
    /// `<name>.head_<h>` per head.
    pub fn blocks(&self) -> Vec<(String, i64)> {
        match self.heads {
            None => vec![(self.name.clone(), self.out_features)],
            Some(h) => (0..h.num_heads)
                .map(|i| (format!("{}.head_{i}", self.name), h.head_size))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linears() -> Vec<LinearInfo> {
        [
            "layers.0.attention.query_key_value",
            "layers.0.attention.dense",
            "layers.0.mlp.dense_h_to_4h",
            "layers.0.mlp.dense_4h_to_h",
        ]
        .iter()
        .map(|n| LinearInfo {
            name: n.to_string(),
            in_features: 4,
            out_features: 8,
            has_bias: true,
        })
        .collect()
    }

    #[test]
    fn filter_modules_excludes_fnmatch_globs() {
        let t = discover_targets(&linears(), &[], Some("*.mlp.*, *dense"), false).unwrap();
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["layers.0.attention.query_key_value"]);
    }

    #[test]
    fn modules_keeps_matches_in_model_order_and_refuses_unknown() {
        let t = discover_targets(
            &linears(),
            &["*.mlp.dense_4h_to_h".into(), "layers.0.attention.*".into()],
            None,
            true,
        )
        .unwrap();
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "layers.0.attention.query_key_value",
                "layers.0.attention.dense",
                "layers.0.mlp.dense_4h_to_h"
            ]
        );
        assert!(t.iter().all(|t| t.collect_bias));
        let e = discover_targets(&linears(), &["layers.9.*".into()], None, false).unwrap_err();
        assert!(e.to_string().contains("matches no module"), "{e}");
    }

    #[test]
    fn excluding_everything_is_an_error() {
        let e = discover_targets(&linears(), &[], Some("*"), false).unwrap_err();
        assert!(e.to_string().contains("excludes every module"), "{e}");
    }

    #[test]
    fn heads_are_checked_and_named() {
        let mut t = discover_targets(&linears(), &[], None, false).unwrap();
        let h = AttentionConfig {
            num_heads: 2,
            head_size: 4,
            head_dim: 2,
        };
        split_heads(&mut t, &["layers.0.attention.dense".into()], h).unwrap();
        assert_eq!(
            t[1].blocks(),
            [
                ("layers.0.attention.dense.head_0".to_string(), 4),
                ("layers.0.attention.dense.head_1".to_string(), 4)
            ]
        );
        let bad = AttentionConfig {
            num_heads: 3,
            head_size: 4,
            head_dim: 2,
        };
        assert!(split_heads(&mut t, &["layers.0.attention.dense".into()], bad).is_err());
        assert!(split_heads(&mut t, &["nope".into()], h).is_err());
    }
}
