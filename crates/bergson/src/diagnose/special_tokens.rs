//! The special-token check (Bergson's `diagnose_special_tokens`): does our tokenisation of a
//! chat conversation give the ids the model expects, or does it duplicate or drop BOS/EOS?

use std::fmt::Write as _;

use crate::data::tokenize::{ChatTemplates, Tokenizer};
use crate::data::ChatMessage;
use crate::Result;

/// The verdict and the report section of the special-token check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokenCheck {
    /// Whether the check passed (also when the tokenizer has no chat template).
    pub ok: bool,
    /// The printed section.
    pub text: String,
}

/// Checks the chat template of `tokenizer` on Bergson's sample conversation.
///
/// The model's expectation is the template rendered and tokenised without adding special
/// tokens (transformers' `apply_chat_template(tokenize=True)`); ours is
/// [`crate::data::tokenize::Encoder::encode_conversation`], what `build` indexes. Beyond
/// Bergson's comparison, a BOS (or EOS) token twice in a row at the start of the ids is
/// flagged too: the two sides agree then (both render the same template), but a template that
/// writes BOS twice gives the model a sequence it never saw in training.
pub fn check_special_tokens(tokenizer: &Tokenizer, model: &str) -> Result<SpecialTokenCheck> {
    let mut t = String::new();
    let token = |name: &str| {
        let tok = tokenizer.special_token(name).map(str::to_string);
        let id = tok.as_deref().and_then(|s| tokenizer.token_to_id(s));
        (tok, id)
    };
    let (bos, bos_id) = token("bos_token");
    let (eos, eos_id) = token("eos_token");
    let bar = "=".repeat(60);
    let _ = writeln!(t, "\n{bar}\nSpecial token check: {model}\n{bar}");
    let _ = writeln!(
        t,
        "  bos_token: {} (id={})",
        py_repr_opt(&bos),
        py_opt(bos_id)
    );
    let _ = writeln!(
        t,
        "  eos_token: {} (id={})",
        py_repr_opt(&eos),
        py_opt(eos_id)
    );

    let messages = [
        ChatMessage {
            role: "user".into(),
            content: "Hello".into(),
        },
        ChatMessage {
            role: "assistant".into(),
            content: "Hi there".into(),
        },
    ];
    if matches!(tokenizer.chat_templates(), ChatTemplates::None) {
        let _ = writeln!(
            t,
            "\n  No chat template found — special token check not applicable."
        );
        return Ok(SpecialTokenCheck { ok: true, text: t });
    }
    let rendered = match tokenizer.apply_chat_template(&messages) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(t, "\n  FAIL: the chat template cannot be rendered: {e}");
            return Ok(SpecialTokenCheck { ok: false, text: t });
        }
    };
    let expected: Vec<i64> = match tokenizer.inner().encode(rendered.as_str(), false) {
        Ok(enc) => enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
        Err(e) => {
            let _ = writeln!(
                t,
                "\n  FAIL: the rendered template cannot be tokenised: {e}"
            );
            return Ok(SpecialTokenCheck { ok: false, text: t });
        }
    };
    let actual = match tokenizer
        .encoder(None)
        .and_then(|enc| enc.encode_conversation(&messages))
    {
        Ok(row) => row.input_ids,
        Err(e) => {
            let _ = writeln!(t, "\n  FAIL: bergson tokenize raised: {e}");
            return Ok(SpecialTokenCheck { ok: false, text: t });
        }
    };
    let head: String = rendered.chars().take(200).collect();
    let _ = writeln!(
        t,
        "\n  Template string (first 200 chars):\n    {}",
        py_repr(&head)
    );

    let mut ok = true;
    if actual == expected {
        let _ = writeln!(
            t,
            "\n  PASS: bergson tokenize() matches apply_chat_template(tokenize=True)."
        );
    } else {
        ok = false;
        let _ = writeln!(
            t,
            "\n  FAIL: bergson tokenize() does not match apply_chat_template(tokenize=True)."
        );
        let _ = writeln!(
            t,
            "    bergson length: {}, expected: {}",
            actual.len(),
            expected.len()
        );
        let mut seen = Vec::new();
        for (name, id) in [("BOS", bos_id), ("EOS", eos_id)] {
            let Some(id) = id.filter(|id| !seen.contains(id)) else {
                continue;
            };
            seen.push(id);
            let count = |ids: &[i64]| ids.iter().filter(|&&x| x == i64::from(id)).count();
            let (n_actual, n_expected) = (count(&actual), count(&expected));
            if n_actual != n_expected {
                let kind = if n_actual > n_expected {
                    "DUPLICATED"
                } else {
                    "MISSING"
                };
                let _ = writeln!(
                    t,
                    "    <<< {kind} {name} (id={id}): bergson has {n_actual}, expected {n_expected}"
                );
            }
        }
        let common = actual.len().min(expected.len());
        let first = (0..common)
            .find(|&i| actual[i] != expected[i])
            .unwrap_or(common);
        let _ = writeln!(t, "    First divergence at position {first}:");
        if first < common {
            for (label, ids) in [("bergson", &actual), ("expected", &expected)] {
                let id = ids[first];
                let text = tokenizer
                    .inner()
                    .decode(&[id as u32], false)
                    .unwrap_or_default();
                let _ = writeln!(t, "      {label}[{first}] = {id} ({})", py_repr(&text));
            }
        }
    }
    for (name, id) in [("BOS", bos_id), ("EOS", eos_id)] {
        if let Some(id) = id {
            let id = i64::from(id);
            if actual.len() >= 2 && actual[0] == id && actual[1] == id {
                ok = false;
                let _ = writeln!(
                    t,
                    "\n  FAIL: the tokenised conversation starts with {name} twice.\n    <<< DUPLICATED {name} (id={id}): the chat template writes it again after the tokenizer's; remove the extra {{{{ bos_token }}}} from the template"
                );
            }
        }
    }
    Ok(SpecialTokenCheck { ok, text: t })
}

fn py_opt(id: Option<u32>) -> String {
    id.map_or_else(|| "None".into(), |i| i.to_string())
}

/// Python's `repr` of an optional string.
fn py_repr_opt(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "None".into(), py_repr)
}

/// Python's `repr` of a string: single quotes unless it holds one and no double quote, with
/// backslash escapes for the quote, backslash and control characters.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}
