//! Splitting a JSON Lines or JSON file into its records without holding the file: the bytes
//! are read in chunks and each record's extent found by tracking strings and bracket depth.
//! Lines are counted as the scan passes them (each byte once), so every record knows the line
//! it starts on at no extra cost, however deep in the file it lies.
//!
//! Only the extent of a record is found here; `serde_json` parses (and validates) each record.
//! For valid JSON the extent is exact. For invalid JSON the extent ends no earlier than where
//! a parser reading the whole file would fail, so the parse error lands on the same byte.

use std::io::Read;

/// Bytes read at a time.
const CHUNK: usize = 1 << 20;

/// A place in the file: 1-based line, and 1-based byte column on that line (as `serde_json`
/// reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub line: usize,
    pub column: usize,
}

/// How the file holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// A stream of top-level values (JSON Lines; a value may span lines).
    Lines,
    /// One top-level list whose items are the records; `start` is where the list opens.
    List { start: Position },
}

/// One record's bytes.
#[derive(Debug)]
pub(super) struct Record<'a> {
    /// Where the record starts.
    pub start: Position,
    /// The record's JSON text.
    pub bytes: &'a [u8],
    /// Whether a bare `N` or `I` occurs outside strings: the record may hold Python's `NaN`,
    /// `Infinity` or `-Infinity`.
    pub has_specials: bool,
}

/// Why the file could not be split.
#[derive(Debug)]
pub(super) enum ScanError {
    /// Reading failed.
    Io(std::io::Error),
    /// The byte at this file offset is not valid UTF-8.
    Utf8 { offset: u64 },
    /// The list structure around the records is broken (list layout only).
    Syntax { message: &'static str, at: Position },
}

impl From<std::io::Error> for ScanError {
    fn from(e: std::io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Where the scan is within a list layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListState {
    /// Just after `[`.
    Open,
    /// After an item.
    AfterItem,
    /// After the closing `]`.
    Closed,
}

/// Reads a file's records one at a time.
pub(super) struct RecordReader<R> {
    input: R,
    /// File bytes `base..base + buf.len()`.
    buf: Vec<u8>,
    base: u64,
    /// The scan cursor (index into `buf`).
    pos: usize,
    eof: bool,
    /// Lines are counted up to file offset `counted`: `line` is the line there, starting at
    /// file offset `line_start`.
    counted: u64,
    line: usize,
    line_start: u64,
    /// File offset up to which the bytes are valid UTF-8; `None` when not checked.
    validated: Option<u64>,
    layout: Layout,
    list: ListState,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl<R: Read> RecordReader<R> {
    /// Starts reading `input`, skipping a UTF-8 byte-order mark; with `check_utf8`, every byte
    /// read is checked to be UTF-8 (see [`ScanError::Utf8`]).
    pub fn new(input: R, check_utf8: bool) -> Result<Self, ScanError> {
        let mut reader = RecordReader {
            input,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            eof: false,
            counted: 0,
            line: 1,
            line_start: 0,
            validated: check_utf8.then_some(0),
            layout: Layout::Lines,
            list: ListState::Open,
        };
        while reader.buf.len() < 3 && reader.fill()? {}
        if reader.buf.starts_with(b"\xef\xbb\xbf") {
            // Columns count from after the mark, as they do in the text without it.
            reader.pos = 3;
            reader.counted = 3;
            reader.line_start = 3;
        }
        if reader.skip_space()? && reader.buf[reader.pos] == b'[' {
            reader.layout = Layout::List {
                start: reader.position_at(reader.pos),
            };
            reader.pos += 1;
        }
        Ok(reader)
    }

    /// How the file holds its records.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Bytes of the file scanned so far.
    pub fn consumed(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ScanError> {
        match self.layout {
            Layout::Lines => {
                if !self.skip_space()? {
                    return Ok(None);
                }
            }
            Layout::List { .. } => {
                if !self.next_item()? {
                    return Ok(None);
                }
            }
        }
        let start = self.pos;
        let at = self.position_at(start);
        let (start, end, has_specials) = self.scan_value(start)?;
        self.pos = end;
        if self.layout != Layout::Lines {
            self.list = ListState::AfterItem;
        }
        Ok(Some(Record {
            start: at,
            bytes: &self.buf[start..end],
            has_specials,
        }))
    }

    /// In a list layout, moves to the next item's first byte; `false` after the list (and
    /// nothing but whitespace after it).
    fn next_item(&mut self) -> Result<bool, ScanError> {
        loop {
            let more = self.skip_space()?;
            let syntax = |reader: &mut Self, message| {
                let at = reader.position_at(reader.pos);
                Err(ScanError::Syntax { message, at })
            };
            match self.list {
                ListState::Closed if !more => return Ok(false),
                ListState::Closed => return syntax(self, "trailing characters"),
                _ if !more => return syntax(self, "EOF while parsing a list"),
                ListState::Open if self.buf[self.pos] == b']' => {
                    self.pos += 1;
                    self.list = ListState::Closed;
                }
                ListState::Open => return Ok(true),
                ListState::AfterItem => match self.buf[self.pos] {
                    b']' => {
                        self.pos += 1;
                        self.list = ListState::Closed;
                    }
                    b',' => {
                        self.pos += 1;
                        if !self.skip_space()? {
                            return syntax(self, "EOF while parsing a list");
                        }
                        if self.buf[self.pos] == b']' {
                            return syntax(self, "trailing comma");
                        }
                        return Ok(true);
                    }
                    _ => return syntax(self, "expected `,` or `]`"),
                },
            }
        }
    }

    /// Finds the end of the value starting at `buf[start]`: a container ends where its
    /// brackets balance, a string at its closing quote, anything else before the next
    /// whitespace or structural character. Returns the (possibly moved) start, the end and
    /// whether special float tokens may occur. An unterminated value ends at the end of file.
    fn scan_value(&mut self, mut start: usize) -> Result<(usize, usize, bool), ScanError> {
        let first = self.buf[start];
        let container = matches!(first, b'{' | b'[');
        let mut in_string = first == b'"';
        let scalar = !container && !in_string;
        let mut depth = 0usize;
        let mut escaped = false;
        let mut specials = false;
        let mut i = start + usize::from(!scalar);
        if container {
            depth = 1;
        }
        if scalar && matches!(first, b',' | b':' | b']' | b'}') {
            // A stray structural character: a one-byte record the parser rejects.
            return Ok((start, start + 1, false));
        }
        loop {
            if i == self.buf.len() {
                let shift = self.pos_shift_fill(start)?;
                start -= shift;
                i -= shift;
                if i == self.buf.len() {
                    return Ok((start, i, specials));
                }
            }
            let bytes = &self.buf[i..];
            let mut done = None;
            for (k, &b) in bytes.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            done = Some(k + 1);
                            break;
                        }
                    }
                    continue;
                }
                if scalar {
                    if is_space(b) || matches!(b, b',' | b':' | b'[' | b']' | b'{' | b'}' | b'"') {
                        done = Some(k);
                        break;
                    }
                    specials |= matches!(b, b'N' | b'I');
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            done = Some(k + 1);
                            break;
                        }
                    }
                    b'N' | b'I' => specials = true,
                    _ => {}
                }
            }
            match done {
                Some(k) => return Ok((start, i + k, specials)),
                None => i = self.buf.len(),
            }
        }
    }

    /// Skips whitespace; `false` at the end of the file.
    fn skip_space(&mut self) -> Result<bool, ScanError> {
        loop {
            match self.buf[self.pos..].iter().position(|&b| !is_space(b)) {
                Some(k) => {
                    self.pos += k;
                    return Ok(true);
                }
                None => {
                    self.pos = self.buf.len();
                    let keep = self.pos;
                    self.pos_shift_fill(keep)?;
                    if self.pos == self.buf.len() {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Reads more of the file, dropping the bytes before `keep` (and before the cursor);
    /// returns by how much indices moved down. At the end of file nothing is added.
    fn pos_shift_fill(&mut self, keep: usize) -> Result<usize, ScanError> {
        let keep = keep.min(self.pos);
        let mut drop = keep;
        if let Some(v) = self.validated {
            drop = drop.min((v - self.base) as usize);
        }
        self.count_to(self.base + drop as u64);
        self.buf.drain(..drop);
        self.base += drop as u64;
        self.pos -= drop;
        self.fill()?;
        Ok(drop)
    }

    /// Appends the next chunk; `false` at the end of the file.
    fn fill(&mut self) -> Result<bool, ScanError> {
        if self.eof {
            return Ok(false);
        }
        let old = self.buf.len();
        self.buf.resize(old + CHUNK, 0);
        let n = loop {
            match self.input.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e.into());
                }
            }
        };
        self.buf.truncate(old + n);
        self.eof = n == 0;
        self.validate()?;
        Ok(n > 0)
    }

    /// Checks the bytes read so far are UTF-8 (a character cut by the chunk end waits for the
    /// next chunk).
    fn validate(&mut self) -> Result<(), ScanError> {
        let Some(done) = self.validated else {
            return Ok(());
        };
        let from = (done - self.base) as usize;
        match std::str::from_utf8(&self.buf[from..]) {
            Ok(_) => self.validated = Some(self.base + self.buf.len() as u64),
            Err(e) if e.error_len().is_none() && !self.eof => {
                self.validated = Some(done + e.valid_up_to() as u64);
            }
            Err(e) => {
                return Err(ScanError::Utf8 {
                    offset: done + e.valid_up_to() as u64,
                })
            }
        }
        Ok(())
    }

    /// Reads (and UTF-8 checks) the rest of the file: a file that is not UTF-8 reports that
    /// first, whatever else is wrong with it earlier.
    pub fn check_rest(&mut self) -> Result<(), ScanError> {
        if self.validated.is_none() {
            return Ok(());
        }
        loop {
            self.pos = self.buf.len();
            let keep = self.pos;
            self.pos_shift_fill(keep)?;
            if self.eof {
                return Ok(());
            }
        }
    }

    /// Counts lines up to file offset `to` (not below what was counted).
    fn count_to(&mut self, to: u64) {
        if to <= self.counted {
            return;
        }
        let from = (self.counted - self.base) as usize;
        let end = (to - self.base) as usize;
        let bytes = &self.buf[from..end];
        if let Some(last) = bytes.iter().rposition(|&b| b == b'\n') {
            self.line += bytes.iter().filter(|&&b| b == b'\n').count();
            self.line_start = self.counted + last as u64 + 1;
        }
        self.counted = to;
    }

    /// The line and column of `buf[index]`.
    fn position_at(&mut self, index: usize) -> Position {
        let offset = self.base + index as u64;
        self.count_to(offset);
        Position {
            line: self.line,
            column: (offset - self.line_start) as usize + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record's start and text, read through chunks of `chunk` bytes.
    fn records(text: &str, chunk: usize) -> (Layout, Vec<(usize, usize, String)>) {
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(self.1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut reader = RecordReader::new(Trickle(text.as_bytes(), chunk), true).unwrap();
        let mut out = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            out.push((
                r.start.line,
                r.start.column,
                String::from_utf8(r.bytes.to_vec()).unwrap(),
            ));
        }
        (reader.layout(), out)
    }

    #[test]
    fn records_and_their_lines_do_not_depend_on_chunk_boundaries() {
        let text = "\u{feff}{\"a\": \"}{\\\"\"}\n\n  {\"b\": [1, {\"c\": \"]\"}],\n \"d\": NaN} 42 \"s\"\n{}";
        let want = [
            (1, 1, "{\"a\": \"}{\\\"\"}"),
            (3, 3, "{\"b\": [1, {\"c\": \"]\"}],\n \"d\": NaN}"),
            (4, 12, "42"),
            (4, 15, "\"s\""),
            (5, 1, "{}"),
        ];
        for chunk in [1, 2, 3, 7, 1000] {
            let (layout, got) = records(text, chunk);
            assert_eq!(layout, Layout::Lines);
            let got: Vec<(usize, usize, &str)> =
                got.iter().map(|(l, c, s)| (*l, *c, s.as_str())).collect();
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn list_items_are_records() {
        let text = "\n [ {\"a\": 1},\n\"x\" ,[2,3] ]\n";
        for chunk in [1, 4, 1000] {
            let (layout, got) = records(text, chunk);
            assert_eq!(
                layout,
                Layout::List {
                    start: Position { line: 2, column: 2 }
                }
            );
            let texts: Vec<&str> = got.iter().map(|(_, _, s)| s.as_str()).collect();
            assert_eq!(texts, ["{\"a\": 1}", "\"x\"", "[2,3]"], "chunk {chunk}");
            assert_eq!(got[1].0, 3);
        }
    }

    #[test]
    fn broken_lists_and_bad_utf8_are_reported_where_they_are() {
        let fails = |text: &[u8]| {
            let mut reader = RecordReader::new(text, true)?;
            while reader.next_record()?.is_some() {}
            Ok::<(), ScanError>(())
        };
        for (text, want, line) in [
            (&b"[1, 2,]"[..], "trailing comma", 1),
            (b"[1 2]", "expected `,` or `]`", 1),
            (b"[1,\n2", "EOF while parsing a list", 2),
            (b"[1]\n{}", "trailing characters", 2),
        ] {
            match fails(text) {
                Err(ScanError::Syntax { message, at }) => {
                    assert_eq!((message, at.line), (want, line))
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
            }
        }
        match fails(b"{\"a\": \"\xff\"}") {
            Err(ScanError::Utf8 { offset }) => assert_eq!(offset, 7),
            other => panic!("{other:?}"),
        }
    }
}
