//! `bergson build --moe_experts` on the command line: the refusals Bergson 2.5.1 makes are one
//! line with exit status 2, and an expanded MoE index names one module per expert projection.

mod common;

use common::{assert_one_line_error, bergson, fixtures};

fn build(dir: &std::path::Path, model: &str, extra: &[&str]) -> std::process::Output {
    let mut cmd = bergson();
    cmd.arg("build")
        .arg(dir.join("run"))
        .arg("--model")
        .arg(fixtures().join("models").join(model))
        .arg("--dataset")
        .arg(fixtures().join("bergson/data/text.jsonl"))
        .args([
            "--split",
            "train[:2]",
            "--token_batch_size",
            "64",
            "--quiet",
        ])
        .args(extra);
    cmd.output().expect("run bergson")
}

#[test]
fn moe_experts_refusals_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let glob = "model.layers.*.mlp.experts";
    let out = build(tmp.path(), "qwen3", &["--moe_experts", glob]);
    assert_one_line_error(&out, &["--moe_experts", "matched no fused MoE"]);
    let out = build(
        tmp.path(),
        "qwen3_moe",
        &["--moe_experts", "model.layers.*"],
    );
    assert_one_line_error(&out, &["--moe_experts", "no fused expert weights"]);
    let out = build(
        tmp.path(),
        "qwen3_moe",
        &["--moe_experts", glob, "--attribute_tokens"],
    );
    assert_one_line_error(&out, &["--attribute_tokens", "--moe_experts"]);
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn expanded_index_names_every_expert() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build(
        tmp.path(),
        "olmoe",
        &[
            "--moe_experts",
            "model.layers.1.mlp.experts",
            "--projection_dim",
            "4",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("run/info.json")).unwrap())
            .unwrap();
    let text = info.to_string();
    for e in 0..4 {
        for proj in ["gate_up_proj", "down_proj"] {
            let name = format!("layers.1.mlp.experts.expert_{e}.{proj}");
            assert!(text.contains(&name), "info.json lacks {name}: {text}");
        }
    }
    assert!(!text.contains("layers.0.mlp.experts"), "{text}");
}
