//! A pre-flight walk over a pickle program (`data.pkl`) for what libtorch's unpickler gets
//! wrong or reports obscurely, so `load` can name the problem and the fix.
//!
//! libtorch's unpickler reads protocol 2 only, reads 8-byte `LONG1` ints only, and maps every
//! `collections.OrderedDict` to None: harmless for the empty one each tensor carries as its
//! backward hooks, but a user's OrderedDict (an `nn.Module.state_dict()`) silently becomes None
//! when empty and fails an internal assert otherwise. The walk counts OrderedDicts against the
//! tensor rebuilds that consume one each. It does not evaluate the program; ops it does not
//! know (protocol 3+) end the walk and are left to libtorch.

use std::collections::HashMap;

/// The globals the walk tracks.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Global {
    OrderedDict,
    /// A tensor rebuild function, which takes one `OrderedDict()` (backward hooks) argument.
    TensorRebuild,
    Other,
}

fn classify(module: &[u8], name: &[u8]) -> Global {
    match (module, name) {
        (b"collections", b"OrderedDict") => Global::OrderedDict,
        (
            b"torch._utils",
            b"_rebuild_tensor_v2"
            | b"_rebuild_qtensor"
            | b"_rebuild_parameter"
            | b"_rebuild_parameter_with_state",
        ) => Global::TensorRebuild,
        _ => Global::Other,
    }
}

/// What libtorch's unpickler cannot load in `program`, as the end of a sentence starting with
/// the file's name; `Ok` when nothing was found.
pub(super) fn check_program(program: &[u8]) -> Result<(), String> {
    let mut ops = Ops { program, pos: 0 };
    match ops.next() {
        Some((0x80, arg)) => {
            let protocol = arg.first().copied().unwrap_or(0);
            if protocol != 2 {
                return Err(format!(
                    "was pickled with protocol {protocol}, and libtorch reads protocol 2 only: \
                     re-save it with torch.save's default pickle_protocol"
                ));
            }
        }
        _ => return Err("holds no pickle program (data.pkl does not start with PROTO)".into()),
    }
    let mut memo: HashMap<u64, Global> = HashMap::new();
    let (mut ordered_dicts, mut rebuilds) = (0usize, 0usize);
    // The global the previous op pushed, so a following PUT can record it in the memo.
    let mut pushed: Option<Global> = None;
    for (op, arg) in ops {
        let now = match op {
            // GLOBAL: "module\nname\n"
            b'c' => {
                let mut parts = arg.split(|&b| b == b'\n');
                let module = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default();
                Some(classify(module, name))
            }
            b'h' | b'j' | b'g' => memo_key(op, arg).and_then(|k| memo.get(&k).copied()),
            b'q' | b'r' | b'p' => {
                if let Some(key) = memo_key(op, arg) {
                    match pushed {
                        Some(global) => memo.insert(key, global),
                        None => memo.remove(&key),
                    };
                }
                // A PUT leaves the stack as it was: keep what the op before pushed.
                continue;
            }
            0x8a | 0x8b => {
                let n = arg.len();
                if op == 0x8b || n != 8 {
                    return Err(format!(
                        "holds a Python int stored in {n} bytes (|x| >= 2^31), and libtorch reads \
                         8-byte ints only: keep such counts in a tensor, or re-save with values \
                         below 2^31 or at least 2^55"
                    ));
                }
                None
            }
            b'.' => break,
            _ => None,
        };
        match now {
            Some(Global::OrderedDict) => ordered_dicts += 1,
            Some(Global::TensorRebuild) => rebuilds += 1,
            _ => {}
        }
        pushed = now;
    }
    if ordered_dicts > rebuilds {
        return Err(
            "holds a collections.OrderedDict (an nn.Module.state_dict()?), which \
                    libtorch's reader cannot load: convert it with dict(...) before torch.save"
                .into(),
        );
    }
    Ok(())
}

/// The memo index of a BINGET/LONG_BINGET/GET or BINPUT/LONG_BINPUT/PUT argument.
fn memo_key(op: u8, arg: &[u8]) -> Option<u64> {
    match op {
        b'h' | b'q' => arg.first().map(|&b| u64::from(b)),
        b'j' | b'r' => Some(u64::from(u32::from_le_bytes(arg.try_into().ok()?))),
        _ => std::str::from_utf8(arg).ok()?.trim().parse().ok(),
    }
}

/// Iterator over (opcode, argument bytes) of a pickle program up to protocol 2.
struct Ops<'a> {
    program: &'a [u8],
    pos: usize,
}

impl<'a> Ops<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.program.len())?;
        let out = &self.program[self.pos..end];
        self.pos = end;
        Some(out)
    }

    /// `n` little-endian length bytes, then that many bytes.
    fn counted(&mut self, n: usize) -> Option<&'a [u8]> {
        let len = self
            .take(n)?
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        self.take(len)
    }

    /// Bytes up to and including the `lines`-th newline, without the last newline.
    fn lines(&mut self, lines: usize) -> Option<&'a [u8]> {
        let rest = &self.program[self.pos..];
        let mut end = 0;
        for _ in 0..lines {
            end += rest[end..].iter().position(|&b| b == b'\n')? + 1;
        }
        self.pos += end;
        Some(&rest[..end - 1])
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let op = *self.take(1)?.first()?;
        let arg: &[u8] = match op {
            // No argument.
            b'('
            | b'.'
            | b'0'
            | b'1'
            | b'2'
            | b'N'
            | b'Q'
            | b'R'
            | b'a'
            | b'b'
            | b'd'
            | b'}'
            | b'e'
            | b'l'
            | b']'
            | b'o'
            | b's'
            | b't'
            | b')'
            | b'u'
            | 0x81
            | 0x85..=0x89 => &[],
            // Fixed-size arguments.
            b'K' | b'h' | b'q' | 0x80 | 0x82 => self.take(1)?,
            b'M' | 0x83 => self.take(2)?,
            b'J' | b'j' | b'r' | 0x84 => self.take(4)?,
            b'G' => self.take(8)?,
            // Length-prefixed arguments.
            b'U' | b'C' | 0x8a => self.counted(1)?,
            b'T' | b'X' | b'B' | 0x8b => self.counted(4)?,
            // Newline-terminated arguments (protocol 0 ops).
            b'F' | b'I' | b'L' | b'P' | b'S' | b'V' | b'g' | b'p' => self.lines(1)?,
            b'c' | b'i' => self.lines(2)?,
            // Protocol 3+ or not a pickle: stop, libtorch will say what is wrong.
            _ => return None,
        };
        Some((op, arg))
    }
}

#[cfg(test)]
mod tests {
    use super::check_program;

    const OD: &[u8] = b"ccollections\nOrderedDict\nq\x00";
    const REBUILD: &[u8] = b"ctorch._utils\n_rebuild_tensor_v2\nq\x01";

    fn program(parts: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        for part in parts {
            p.extend_from_slice(part);
        }
        p.push(b'.');
        p
    }

    #[test]
    fn accepts_plain_dict() {
        // {"a": 1}
        assert!(check_program(&program(&[b"}q\x00X\x01\x00\x00\x00aK\x01s"])).is_ok());
    }

    #[test]
    fn rejects_other_protocols() {
        let err = check_program(&[0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0, b'.']).unwrap_err();
        assert!(err.contains("protocol 4"), "{err}");
        assert!(check_program(b"not a pickle").is_err());
    }

    #[test]
    fn ordered_dict_only_as_tensor_hooks() {
        // The OrderedDict global (memo 0) and rebuild (memo 1) once each, then a second tensor
        // that fetches both from the memo: 2 rebuilds, 2 hook dicts.
        let hooks_again: &[u8] = b"h\x01(h\x00)R";
        let ok = program(&[REBUILD, b"(", OD, b")Rt", hooks_again, b"t"]);
        assert!(check_program(&ok).is_ok());
        // One more OrderedDict than tensors: a user's OrderedDict.
        let bad = program(&[REBUILD, b"(", OD, b")Rt", b"h\x00)R"]);
        let err = check_program(&bad).unwrap_err();
        assert!(err.contains("OrderedDict"), "{err}");
        assert!(check_program(&program(&[OD, b")R"])).is_err());
    }

    #[test]
    fn rejects_short_long1() {
        // 2**40 pickles as LONG1 with 6 bytes.
        let err = check_program(&program(&[&[0x8a, 6, 0, 0, 0, 0, 0, 1]])).unwrap_err();
        assert!(err.contains("6 bytes"), "{err}");
        assert!(check_program(&program(&[&[0x8a, 8, 0, 0, 0, 0, 0, 0, 0, 0x40]])).is_ok());
    }
}
