//! Ctrl-C while preparing data: [`bergson::interrupt::request`] during reading or tokenising
//! ends the phase with `Error::Interrupted`. Its own test binary (one test), since the flag is
//! process-wide and would stop other tests' reads.

mod data_support;

use std::io::Write;
use std::path::Path;

use bergson::data::formats::{csv::read_csv, json::read_json, read_file, Format};
use bergson::data::tokenize::Tokenizer;
use bergson::{interrupt, Error};
use data_support::fixture;

/// Reads `path` (a FIFO) with `read_json` while a writer feeds it `head`, asks for an interrupt,
/// then feeds `tail`: the interrupt lands while the reader is part-way through the data, and
/// the reader cannot have finished, since the writer holds the pipe open until after asking.
fn interrupted_mid_read(
    path: &Path,
    head: String,
    tail: String,
) -> bergson::Result<arrow::record_batch::RecordBatch> {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let writer_path = path.to_path_buf();
    let writer = std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        // Errors after the reader has gone (a broken pipe) are expected.
        let _ = pipe.write_all(head.as_bytes());
        let _ = pipe.flush();
        std::thread::sleep(std::time::Duration::from_millis(50));
        interrupt::request();
        let _ = pipe.write_all(tail.as_bytes());
    });
    let result = read_json(path);
    writer.join().unwrap();
    interrupt::clear();
    result
}

#[test]
fn ctrl_c_while_reading_or_tokenising_stops_the_phase() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = |rows: std::ops::Range<usize>| -> String {
        rows.map(|i| format!("{{\"text\": \"document {i}\"}}\n"))
            .collect()
    };
    let got = interrupted_mid_read(
        &dir.path().join("a.jsonl"),
        jsonl(0..1000),
        jsonl(1000..200_000),
    );
    assert!(matches!(got, Err(Error::Interrupted)), "{got:?}");

    // The other formats and tokenising poll the same flag (CSV opens its file three times, so
    // it cannot read a FIFO).
    interrupt::request();
    let csv = dir.path().join("a.csv");
    std::fs::write(&csv, "id,text\n1,a\n").unwrap();
    let got = read_csv(&csv, b',');
    assert!(matches!(got, Err(Error::Interrupted)), "{got:?}");
    for (name, format) in [
        ("prompts.parquet", Format::Parquet),
        ("prompts.arrow", Format::Arrow),
        ("prompts_file.arrow", Format::Arrow),
    ] {
        let got = read_file(Path::new(&fixture(name)), format);
        assert!(matches!(got, Err(Error::Interrupted)), "{name}: {got:?}");
    }
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
    let tokenizer = Tokenizer::from_dir(models.join("gpt_neox")).unwrap();
    let encoder = tokenizer.encoder(None).unwrap();
    let got = encoder.encode_texts(&["a b c"; 10]);
    assert!(matches!(got, Err(Error::Interrupted)), "{got:?}");
    interrupt::clear();
    assert_eq!(encoder.encode_texts(&["a b c"; 10]).unwrap().len(), 10);
    assert!(read_file(Path::new(&fixture("prompts.parquet")), Format::Parquet).is_ok());
}
