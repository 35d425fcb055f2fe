//! Reading the CSV that Python Bergson's `bergson query --record` appends to: a header
//! `query,direction,result,result_index,score`, then for each query asked its top-k rows
//! (`Top`) and bottom-k rows (`Bottom`).

use std::path::Path;

use crate::{Error, Result};

/// The header `bergson query --record` writes.
pub const HEADER: [&str; 5] = ["query", "direction", "result", "result_index", "score"];

/// One recorded result.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedHit {
    /// The training row.
    pub row: usize,
    /// Its text, as the query session printed it.
    pub text: String,
    /// Its score.
    pub score: f64,
}

/// One query as asked in a session: its top and bottom results in recorded order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedQuery {
    /// The query text.
    pub query: String,
    /// `Top` rows, best first.
    pub top: Vec<RecordedHit>,
    /// `Bottom` rows, lowest first.
    pub bottom: Vec<RecordedHit>,
}

/// True when `path`'s first line is the query-record header.
pub fn is_query_record(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut reader = csv::Reader::from_reader(file);
    reader
        .headers()
        .is_ok_and(|h| h.iter().eq(HEADER.iter().copied()))
}

/// Reads a query record. A query asked again later in the file (its `Top` rows following
/// `Bottom` ones, or another query in between) gets its own entry, as it was its own question.
pub fn read_query_record(path: &Path) -> Result<Vec<RecordedQuery>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::Reader::from_reader(file);
    let bad = |line: u64, what: String| {
        Error::input(format!(
            "{}:{line}: {what}; a query record has the columns {} as `bergson query --record` \
             writes them",
            path.display(),
            HEADER.join(",")
        ))
    };
    let headers = reader
        .headers()
        .map_err(|e| bad(1, format!("unreadable CSV ({e})")))?;
    if !headers.iter().eq(HEADER.iter().copied()) {
        return Err(bad(
            1,
            format!(
                "header is '{}'",
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let mut queries: Vec<RecordedQuery> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(line, format!("unreadable CSV ({e})"))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != HEADER.len() {
            return Err(bad(line, format!("{} fields, not 5", record.len())));
        }
        let row = record[3].parse::<usize>().map_err(|_| {
            bad(
                line,
                format!("result_index '{}' is not a row number", &record[3]),
            )
        })?;
        let score = record[4]
            .parse::<f64>()
            .map_err(|_| bad(line, format!("score '{}' is not a number", &record[4])))?;
        let hit = RecordedHit {
            row,
            text: record[2].to_string(),
            score,
        };
        let top = match &record[1] {
            "Top" => true,
            "Bottom" => false,
            other => {
                return Err(bad(
                    line,
                    format!("direction '{other}' is neither Top nor Bottom"),
                ))
            }
        };
        let same_question = queries
            .last()
            .is_some_and(|q| q.query == record[0] && (!top || q.bottom.is_empty()));
        if !same_question {
            queries.push(RecordedQuery {
                query: record[0].to_string(),
                top: Vec::new(),
                bottom: Vec::new(),
            });
        }
        let query = queries.last_mut().expect("pushed above");
        if top {
            query.top.push(hit);
        } else {
            query.bottom.push(hit);
        }
    }
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report/query_record.csv")
    }

    /// The fixture Python Bergson recorded: two queries, two top and two bottom rows each, a
    /// text spanning lines kept whole.
    #[test]
    fn python_record_groups_by_query() {
        assert!(is_query_record(&fixture()));
        let queries = read_query_record(&fixture()).unwrap();
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[0].query, "What is the capital of France?");
        assert_eq!(queries[0].top[0].row, 0);
        assert_eq!(queries[0].top[0].text, "The capital of France is Paris.");
        assert_eq!(queries[0].top[0].score, 0.44602537155151367);
        for q in &queries {
            assert_eq!((q.top.len(), q.bottom.len()), (2, 2));
            assert!(q.top[0].score >= q.top[1].score);
            assert!(q.bottom[0].score <= q.bottom[1].score);
        }
        assert!(queries[1].top[1].text.contains('\n'));
    }

    #[test]
    fn a_question_asked_twice_is_two_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(
            &path,
            "query,direction,result,result_index,score\nq,Top,a,0,1\nq,Bottom,b,1,-1\nq,Top,a,0,1\n",
        )
        .unwrap();
        let queries = read_query_record(&path).unwrap();
        assert_eq!(queries.len(), 2);
        assert_eq!(queries[1].top.len(), 1);
    }

    #[test]
    fn bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(
            &path,
            "query,direction,result,result_index,score\nq,Top,a,0,1\nq,Sideways,b,1,-1\n",
        )
        .unwrap();
        let err = read_query_record(&path).unwrap_err().to_string();
        assert!(err.contains("r.csv:3: direction 'Sideways'"), "{err}");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        assert!(!is_query_record(&path));
        let err = read_query_record(&path).unwrap_err().to_string();
        assert!(err.contains("header is 'a,b'"), "{err}");
    }
}
