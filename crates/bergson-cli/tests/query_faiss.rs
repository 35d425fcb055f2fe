//! `bergson query --faiss`: without the `faiss` feature it names the fix (exit 2); with it, a
//! FAISS `Flat` index answers a session exactly as the exact search does, and a bad factory
//! string is a one-line error (exit 2).

use std::io::Write;
use std::process::{Command, Output, Stdio};

mod common;
use common::{assert_one_line_error, copy_dir, repo_root as root, BIN};

/// Copies a Python Bergson fixture index (its config names repository-relative paths, so the
/// binary runs from the repository root).
fn fixture_index(case: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let from = root().join("tests/fixtures/bergson/runs").join(case);
    copy_dir(&from, tmp.path());
    tmp
}

/// `bergson query --quiet <args>` from the repository root with `input` piped in.
fn query(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("query")
        .arg("--quiet")
        .args(args)
        .current_dir(root())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[cfg(not(feature = "faiss"))]
#[test]
fn faiss_without_the_feature_names_the_fix() {
    let index = fixture_index("arch_gpt2");
    let path = index.path().to_str().unwrap();
    let out = query(&["--index", path, "--faiss"], "Hello there\n");
    assert_one_line_error(&out, &["apt-get install libfaiss-dev", "--features faiss"]);
}

#[cfg(feature = "faiss")]
#[test]
fn a_bad_factory_string_is_a_one_line_error() {
    let index = fixture_index("arch_gpt2");
    let path = index.path().to_str().unwrap();
    let out = query(
        &[
            "--index",
            path,
            "--faiss",
            "--index_factory",
            "IVF,Nonsense",
        ],
        "Hello there\n",
    );
    assert_one_line_error(&out, &["IVF,Nonsense", "factory"]);
}

/// The session's results in order: (the line before each `<rank>: (distance: x)` line, which
/// is the result's text for these one-line documents, and x).
#[cfg(feature = "faiss")]
fn results(stdout: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = stdout.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some((_, rest)) = line.split_once(": (distance: ") {
            let score = rest.trim_end_matches(')').parse().unwrap();
            out.push((lines[i - 1].to_string(), score));
        }
    }
    out
}

#[cfg(feature = "faiss")]
#[test]
fn a_flat_faiss_session_answers_as_the_exact_search() {
    let index = fixture_index("arch_gpt2");
    let path = index.path().to_str().unwrap();
    let prompts = "The quick brown fox\nHello, world! How are you?\n";
    let exact = query(&["--index", path, "--top_k", "3"], prompts);
    assert!(
        exact.status.success(),
        "{}",
        String::from_utf8_lossy(&exact.stderr)
    );
    let ann = query(&["--index", path, "--top_k", "3", "--faiss"], prompts);
    assert!(
        ann.status.success(),
        "{}",
        String::from_utf8_lossy(&ann.stderr)
    );
    assert!(index.path().join("faiss_Flat_cosine/config.yaml").is_file());
    let (exact, ann) = (
        results(&String::from_utf8_lossy(&exact.stdout)),
        results(&String::from_utf8_lossy(&ann.stdout)),
    );
    assert_eq!(ann.len(), 12);
    assert_eq!(exact.len(), 12);
    for (i, ((at, a), (_, e))) in ann.iter().zip(&exact).enumerate() {
        assert!((a - e).abs() <= 1e-4, "{ann:?} vs {exact:?}");
        // The same result, or one of the same list with the same score (the index's empty
        // documents are zero rows: they tie at 0, and ties may come in either order).
        let list = i / 3 * 3..i / 3 * 3 + 3;
        let tied: Vec<&String> = exact[list]
            .iter()
            .filter(|(_, s)| (s - e).abs() <= 1e-4)
            .map(|(t, _)| t)
            .collect();
        assert!(tied.contains(&at), "{ann:?} vs {exact:?}");
    }
}
