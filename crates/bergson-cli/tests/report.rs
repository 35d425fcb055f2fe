//! `bergson report` on the score runs and query record Python Bergson 2.5.1 wrote
//! (tests/fixtures/report, made by tests/fixtures/scripts/make_report_fixtures.py): the page
//! lists each query's rows in the order Python's scores give, with their texts escaped and
//! per-token heat maps that spell the documents; it fetches nothing; bad inputs are one-line
//! errors with exit status 2. `report_renders_in_chromium` draws the page in headless Chromium
//! (`cargo test --test report -- --ignored report_renders`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::BIN;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report")
}

fn run_dir(name: &str) -> PathBuf {
    fixtures().join("runs").join(name)
}

/// `load_scores` as Python read each store (see the fixture script).
fn expected(store: &str) -> Value {
    let text = fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all[store].clone()
}

fn train_texts() -> Vec<String> {
    jsonl_texts(&fixtures().join("data/train.jsonl"))
}

fn query_texts() -> Vec<String> {
    jsonl_texts(&fixtures().join("data/queries.jsonl"))
}

fn jsonl_texts(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Runs `bergson report <input> --output <tmp>/report.html <args>` in a temp directory.
fn report(input: &Path, args: &[&str]) -> (Output, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.html");
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .arg("report")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .unwrap();
    let html = fs::read_to_string(&out).unwrap_or_default();
    (output, html, dir)
}

fn report_ok(input: &Path, args: &[&str]) -> (String, tempfile::TempDir) {
    let (output, html, dir) = report(input, args);
    assert!(
        output.status.success(),
        "bergson report failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (html, dir)
}

/// The page's query sections, in order.
fn sections(html: &str) -> Vec<&str> {
    html.split("<section class=\"query\"")
        .skip(1)
        .map(|s| &s[..s.find("</section>").unwrap()])
        .collect()
}

/// A section's top list and bottom list (empty when there is none).
fn lists(section: &str) -> (&str, &str) {
    let top = &section[section.find("<div class=\"list top\">").unwrap()..];
    match top.find("<div class=\"list bottom\">") {
        Some(at) => (&top[..at], &top[at..]),
        None => (top, ""),
    }
}

/// Every value of attribute `name` in `html`, in order.
fn attr_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!("{name}=\"");
    html.match_indices(&key)
        .map(|(at, _)| {
            let rest = &html[at + key.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

fn rows_listed(list: &str) -> Vec<usize> {
    attr_values(list, "data-row")
        .iter()
        .map(|r| r.parse().unwrap())
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Text content of `html` (tags dropped, entities decoded).
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(&out)
}

/// Per-document scores of column `column` from Python's dump: the stored score, or the sum of
/// a document's token rows in a per-token store; `None` where not written.
fn python_item_scores(want: &Value, column: usize) -> Vec<Option<f64>> {
    let scores = want["scores"].as_array().unwrap();
    let written = want["written"].as_array().unwrap();
    let cell = |r: usize| {
        written[r][column]
            .as_bool()
            .unwrap()
            .then(|| scores[r][column].as_f64().unwrap())
    };
    match want["offsets"].as_array() {
        Some(o) => o
            .windows(2)
            .map(|w| {
                (w[0].as_u64().unwrap() as usize..w[1].as_u64().unwrap() as usize)
                    .map(cell)
                    .sum()
            })
            .collect(),
        None => (0..scores.len()).map(cell).collect(),
    }
}

/// Item order, most supporting first, ties by row.
fn python_ranking(want: &Value, column: usize, higher_is_better: bool) -> Vec<usize> {
    let scores = python_item_scores(want, column);
    let mut items: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, s)))
        .collect();
    items.sort_by(|a, b| {
        let o = if higher_is_better {
            b.1.total_cmp(&a.1)
        } else {
            a.1.total_cmp(&b.1)
        };
        o.then(a.0.cmp(&b.0))
    });
    items.into_iter().map(|(i, _)| i).collect()
}

/// Checks every section's top and bottom lists against Python's ranking of `store`.
fn check_rankings(html: &str, store: &str, k: usize, higher_is_better: bool) {
    let want = expected(store);
    let num_scores = want["info"]["num_scores"].as_u64().unwrap() as usize;
    let sections = sections(html);
    assert_eq!(sections.len(), num_scores, "{store}");
    let candidates: Option<Vec<usize>> = want["candidates"]
        .as_array()
        .map(|c| c.iter().map(|v| v.as_u64().unwrap() as usize).collect());
    let row_of = |item: usize| candidates.as_ref().map_or(item, |c| c[item]);
    for (column, section) in sections.iter().enumerate() {
        let ranking: Vec<usize> = python_ranking(&want, column, higher_is_better)
            .into_iter()
            .map(row_of)
            .collect();
        let (top, bottom) = lists(section);
        let top_k = k.min(ranking.len());
        assert_eq!(
            rows_listed(top),
            ranking[..top_k],
            "{store} column {column} top"
        );
        let bottom_k = k.min(ranking.len() - top_k);
        let want_bottom: Vec<usize> = ranking.iter().rev().take(bottom_k).copied().collect();
        assert_eq!(
            rows_listed(bottom),
            want_bottom,
            "{store} column {column} bottom"
        );
    }
}

#[test]
fn per_document_run_lists_each_query_in_pythons_order_with_texts() {
    let (html, _dir) = report_ok(&run_dir("doc"), &["--top_k", "3"]);
    check_rankings(&html, "doc", 3, true);
    let texts = train_texts();
    let queries = query_texts();
    for (section, query) in sections(&html).iter().zip(&queries) {
        assert!(
            text_of(section).contains(query.as_str()),
            "query text {query:?}"
        );
        // Every listed row shows its own text (reloaded from the dataset config.yaml names).
        for hit in section.split("<li class=\"hit").skip(1) {
            let row: usize = attr_values(hit, "data-row")[0].parse().unwrap();
            let doc = &hit[hit.find("<div class=\"doc\">").unwrap()..];
            let doc = &doc[..doc.find("</div>").unwrap() + 6];
            assert_eq!(text_of(doc), texts[row], "row {row}");
        }
        assert!(section.contains("<svg class=\"hist\""), "histogram");
    }
}

#[test]
fn texts_are_escaped_and_nothing_is_fetched() {
    let (html, _dir) = report_ok(&run_dir("doc"), &["--top_k", "8"]);
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; friends"));
    assert!(
        !html.contains("<script"),
        "no script element, and the data's is escaped"
    );
    for input in [
        run_dir("doc"),
        run_dir("tokens"),
        run_dir("bf16"),
        run_dir("candidates"),
        run_dir("partial_fp16"),
        fixtures().join("query_record.csv"),
    ] {
        let (html, _dir) = report_ok(&input, &[]);
        assert!(html.starts_with("<!DOCTYPE html>"), "{}", input.display());
        for remote in ["http://", "https://", "//cdn", "@import", "url("] {
            assert!(
                !html.contains(remote),
                "{} references {remote}",
                input.display()
            );
        }
        assert!(
            !html.contains(" src="),
            "{} loads a resource",
            input.display()
        );
    }
}

/// higher_is_better false (MAGIC): the top rows are the lowest scores.
#[test]
fn lower_is_better_runs_rank_the_lowest_first() {
    let (html, _dir) = report_ok(&run_dir("bf16"), &["--top_k", "3"]);
    check_rankings(&html, "bf16", 3, false);
    assert!(html.contains("lowest scores · proponents"));
}

/// Per-token store: documents ranked by their summed token scores, and each heat map spells
/// its document exactly, one coloured span per (merged) token.
#[test]
fn token_run_heat_maps_spell_each_document() {
    let (html, _dir) = report_ok(&run_dir("tokens"), &["--top_k", "8"]);
    check_rankings(&html, "tokens", 8, true);
    let texts = train_texts();
    let mut maps = 0;
    for section in sections(&html) {
        for hit in section.split("<li class=\"hit").skip(1) {
            let row: usize = attr_values(hit, "data-row")[0].parse().unwrap();
            let heat = &hit[hit.find("<div class=\"doc heat\">").expect("a heat map")..];
            let heat = &heat[..heat.find("</div>").unwrap()];
            assert_eq!(text_of(heat), texts[row], "row {row}");
            let coloured = heat
                .matches("<span class=\"t\" style=\"background:rgba(")
                .count();
            assert!(
                coloured >= texts[row].chars().count() / 3,
                "row {row}: {coloured} spans"
            );
            assert!(hit.contains("class=\"legend\""));
            maps += 1;
        }
    }
    assert_eq!(maps, 3 * 8);
}

/// Candidates: store items are the training rows in candidates.npy; `nearest` folds the
/// queries into one column.
#[test]
fn candidate_run_shows_training_rows_and_all_queries() {
    let (html, _dir) = report_ok(&run_dir("candidates"), &[]);
    check_rankings(&html, "candidates", 10, true);
    let sections = sections(&html);
    assert!(sections[0].contains("All 3 queries"));
    assert!(sections[0].contains("score: nearest"));
    for q in query_texts() {
        assert!(sections[0].contains(q.as_str()), "{q}");
    }
}

/// Rows never written are listed as missing and kept out of the ranking, not ranked as 0.
#[test]
fn unwritten_rows_are_missing_not_zero() {
    let (html, _dir) = report_ok(&run_dir("partial_fp16"), &["--top_k", "2"]);
    check_rankings(&html, "partial_fp16", 2, true);
    for section in sections(&html) {
        assert!(section.contains("Missing (never written, not ranked): 2 rows: 1, 4"));
        let listed = rows_listed(section);
        assert!(!listed.contains(&1) && !listed.contains(&4), "{listed:?}");
    }
    assert!(html.contains("rows are shown by number"));
}

/// The query record: one section per question, rows in the recorded order.
#[test]
fn query_record_groups_rows_by_query() {
    let (html, _dir) = report_ok(&fixtures().join("query_record.csv"), &["--max_chars", "20"]);
    let sections = sections(&html);
    assert_eq!(sections.len(), 2);
    let csv = fs::read_to_string(fixtures().join("query_record.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    for (i, section) in sections.iter().enumerate() {
        let mine: Vec<&csv::StringRecord> = records
            .iter()
            .filter(|r| r[0] == *query_texts()[i])
            .collect();
        let (top, bottom) = lists(section);
        let rows = |dir: &str| -> Vec<usize> {
            mine.iter()
                .filter(|r| &r[1] == dir)
                .map(|r| r[3].parse().unwrap())
                .collect()
        };
        assert_eq!(rows_listed(top), rows("Top"));
        assert_eq!(rows_listed(bottom), rows("Bottom"));
    }
    // `--max_chars 20` cuts "Paris has many museums,\nand the Louvre is the largest."
    assert!(html.contains("Paris has many museu<span class=\"more\"> … 34 more characters"));
}

fn assert_one_line_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(output.stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (output, ..) = report(&dir.path().join("nowhere"), &[]);
    assert_one_line_error(&output, "does not exist");

    let (output, ..) = report(dir.path(), &[]);
    assert_one_line_error(&output, "is not a score run: it has no scores.bin");

    let (output, ..) = report(&run_dir("query"), &[]);
    assert_one_line_error(&output, "it is a gradient index");

    let (output, ..) = report(&fixtures().join("data/train.jsonl"), &[]);
    assert_one_line_error(&output, "neither a score run directory nor");

    // Unreadable stores: info.json not JSON, scores.bin shorter than info.json says.
    let broken = dir.path().join("broken");
    fs::create_dir(&broken).unwrap();
    fs::write(broken.join("info.json"), "{not json").unwrap();
    fs::copy(run_dir("doc").join("scores.bin"), broken.join("scores.bin")).unwrap();
    let (output, ..) = report(&broken, &[]);
    assert_one_line_error(&output, "not the info.json of a score store");

    fs::copy(run_dir("doc").join("info.json"), broken.join("info.json")).unwrap();
    fs::write(broken.join("scores.bin"), [0u8; 10]).unwrap();
    let (output, ..) = report(&broken, &[]);
    assert_one_line_error(&output, "truncated");

    let (output, ..) = report(&run_dir("bf16"), &["--text_field", "body"]);
    assert_one_line_error(&output, "--text_field 'body' is not a column");

    let out_dir = dir.path().join("a_directory");
    fs::create_dir(&out_dir).unwrap();
    let output = Command::new(BIN)
        .args(["report", run_dir("doc").to_str().unwrap(), "--output"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_one_line_error(&output, "a_directory");
}

/// Draws the per-token page in headless Chromium and checks the screenshot: not blank, the
/// heat map's blue and red tints present in many shades, and a page of sensible height.
#[test]
#[ignore = "needs chromium (apt-get install chromium); run with `cargo test --test report -- --ignored report_renders`"]
fn report_renders_in_chromium() {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium on PATH (apt-get install chromium)");
    let (html, dir) = report_ok(&run_dir("tokens"), &["--top_k", "3"]);
    assert!(!html.is_empty());
    let page = dir.path().join("report.html");
    let png = dir.path().join("shot.png");
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,4000")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        png.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let (w, h) = (info.width as usize, info.height as usize);
    assert_eq!((w, h), (1200, 4000));
    let pixel = |x: usize, y: usize| {
        let at = (y * w + x) * channels;
        (buf[at] as i32, buf[at + 1] as i32, buf[at + 2] as i32)
    };

    // Flat fills (six equal pixels in a row) tinted like the support blue (67,147,195) or the
    // oppose red (214,96,77) over white: text antialiasing makes no such runs, while heat maps
    // shade each token by its score, so they bring dozens of distinct tints; a page without
    // heat maps has under ten (bars, badges, borders).
    let mut blue = std::collections::BTreeSet::new();
    let mut red = std::collections::BTreeSet::new();
    let mut last_ink = 0;
    let mut ink = 0usize;
    for y in 0..h {
        let mut run = 1;
        for x in 0..w {
            let (r, g, b) = pixel(x, y);
            if (r, g, b) != (255, 255, 255) {
                ink += 1;
                last_ink = y;
            }
            run = if x > 0 && pixel(x - 1, y) == (r, g, b) {
                run + 1
            } else {
                1
            };
            if run == 6 {
                if b - r > 25 && b > g && g > r {
                    blue.insert((r, g, b));
                }
                if r - b > 25 && r > g && r > 150 {
                    red.insert((r, g, b));
                }
            }
        }
    }
    eprintln!(
        "{ink} non-white pixels, {} blue and {} red tints, content ends at y={last_ink}",
        blue.len(),
        red.len()
    );
    assert!(
        ink > w * h / 50,
        "the page is nearly blank: {ink} non-white pixels"
    );
    assert!(blue.len() > 30, "{} blue shades", blue.len());
    assert!(red.len() > 30, "{} red shades", red.len());
    // Three query sections with three-row lists fill more than a screen, but not all of 4000px.
    assert!(
        (1200..3900).contains(&last_ink),
        "content ends at y={last_ink}"
    );
}
