//! Hugging Face chat templates, rendered with minijinja the way transformers 5 renders them
//! with Jinja2 (`transformers/utils/chat_template_utils.py`):
//!
//! * `trim_blocks` and `lstrip_blocks` on, the template's single trailing newline dropped,
//!   loop controls (`{% break %}`, `{% continue %}`) on;
//! * globals `raise_exception(msg)` (fails the render with `msg`), `strftime_now(fmt)`,
//!   `namespace(...)`, `dict(...)`; the `tojson` filter is Python's `json.dumps` with
//!   `ensure_ascii=False` and no HTML escaping;
//! * Python string/dict methods (`.strip()`, `.split()`, `.items()`, ...) via minijinja-contrib's
//!   pycompat, and values printed as Python prints them (`True`, `None`, `1e+20`, `['a']`);
//! * the `{% generation %}` ... `{% endgeneration %}` tag (assistant-mask tracking) renders its
//!   body unchanged, as it does when no mask is requested;
//! * variables: `messages`, `tools=None`, `documents=None`, `add_generation_prompt`, and the
//!   tokenizer's named special tokens (`bos_token`, `eos_token`, ...).

use super::pyvalue::{json_dumps, py_str, JsonOptions};
use super::ChatMessage;
use crate::{Error, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};

/// Name under which the template is stored in its environment.
const NAME: &str = "chat_template";

/// Marks errors raised by the template's own `raise_exception(...)`.
const RAISED: &str = "\u{1}raise_exception\u{1}";

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source` (Jinja syntax as used by Hugging Face tokenizers).
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| Error::input(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            out.write_str(&py_str(value))
                .map_err(minijinja::Error::from)
        });
        // Jinja2 built-ins minijinja lacks (contrib's truncate takes keywords only, so ours).
        env.add_filter("truncate", truncate);
        env.add_filter("striptags", minijinja_contrib::filters::striptags);
        env.add_filter("filesizeformat", minijinja_contrib::filters::filesizeformat);
        env.add_function("cycler", minijinja_contrib::globals::cycler);
        env.add_function("joiner", minijinja_contrib::globals::joiner);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, rewrite_generation_tags(source))
            .map_err(|e| {
                Error::input(format!("cannot parse the chat template: {}", describe(&e)))
            })?;
        Ok(ChatTemplate { env })
    }

    /// Renders one conversation. `special_tokens` are `(name, text)` pairs such as
    /// `("bos_token", "<s>")`, passed to the template as variables.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        special_tokens: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::input(format!("chat template: {}", describe(&e))))?;
        let mut ctx: Vec<(String, Value)> = special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())])
            })
            .collect();
        ctx.push(("messages".into(), Value::from(messages)));
        ctx.push(("tools".into(), Value::from(())));
        ctx.push(("documents".into(), Value::from(())));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let ctx = Value::from_pairs(ctx);
        tmpl.render(ctx).map_err(|e| match raised_message(&e) {
            Some(msg) => Error::input(format!(
                "the chat template rejected the conversation: {msg}"
            )),
            None => Error::input(format!("cannot render the chat template: {}", describe(&e))),
        })
    }
}

/// One line describing a minijinja error and its causes.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

/// The message of a `raise_exception(...)` call somewhere in the error chain.
fn raised_message(e: &minijinja::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<minijinja::Error>() {
            if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED)) {
                return Some(msg.to_string());
            }
        }
        cur = err.source();
    }
    None
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(&format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        ));
    }
    let mut out = String::new();
    std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "{}",
            chrono::Local::now().format_with_items(items.into_iter())
        ),
    )
    .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, "strftime_now failed"))?;
    Ok(out)
}

/// Jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)` (`leeway` by
/// keyword only: minijinja functions take at most five arguments).
fn truncate(
    s: String,
    length: Option<usize>,
    killwords: Option<bool>,
    end: Option<String>,
    kwargs: Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let length = kwargs
        .get::<Option<usize>>("length")?
        .or(length)
        .unwrap_or(255);
    let killwords = kwargs
        .get::<Option<bool>>("killwords")?
        .or(killwords)
        .unwrap_or(false);
    let end = kwargs
        .get::<Option<String>>("end")?
        .or(end)
        .unwrap_or_else(|| "...".into());
    let leeway = kwargs.get::<Option<usize>>("leeway")?.unwrap_or(5);
    kwargs.assert_all_used()?;
    let end_len = end.chars().count();
    if length < end_len {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("expected length >= {end_len}, got {length}"),
        ));
    }
    if s.chars().count() <= length + leeway {
        return Ok(s);
    }
    let head: String = s.chars().take(length - end_len).collect();
    let head = if killwords {
        head.as_str()
    } else {
        head.rsplit_once(' ').map_or(head.as_str(), |(a, _)| a)
    };
    Ok(format!("{head}{end}"))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let mut opts = JsonOptions::default();
    if let Some(v) = kwargs.get::<Option<bool>>("ensure_ascii")? {
        opts.ensure_ascii = v;
    }
    if let Some(v) = kwargs.get::<Option<Value>>("indent")? {
        opts.indent = if v.is_none() {
            None
        } else if let Some(s) = v.as_str() {
            Some(s.to_string())
        } else {
            let n = i64::try_from(v)?;
            Some(" ".repeat(n.max(0) as usize))
        };
    }
    if let Some(v) = kwargs.get::<Option<Value>>("separators")? {
        if !v.is_none() {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => {
                    opts.separators = Some((a.to_string(), b.to_string()));
                }
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
    }
    if let Some(v) = kwargs.get::<Option<bool>>("sort_keys")? {
        opts.sort_keys = v;
    }
    kwargs.assert_all_used()?;
    json_dumps(value, &opts)
}

/// Replaces transformers' `{% generation %}`/`{% endgeneration %}` tags with an equivalent
/// always-true `if` block, keeping whitespace-control markers so trimming stays identical.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        match parse_tag(tag) {
            Some((len, open, word, close)) => {
                let stmt = if word == "generation" {
                    "if true"
                } else {
                    "endif"
                };
                out.push_str(&format!("{{%{open} {stmt} {close}%}}"));
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses `{%[-+]? (generation|endgeneration) [-+]?%}` at the start of `s`:
/// (length, opening marker, word, closing marker).
fn parse_tag(s: &str) -> Option<(usize, &str, &str, &str)> {
    let body = s.strip_prefix("{%")?;
    let open = if body.starts_with(['-', '+']) {
        &body[..1]
    } else {
        ""
    };
    let body = &body[open.len()..];
    let trimmed = body.trim_start();
    let word = ["endgeneration", "generation"].into_iter().find(|w| {
        trimmed.starts_with(w)
            && !trimmed[w.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })?;
    let after = trimmed[word.len()..].trim_start();
    let (close, after) = match after.strip_prefix(['-', '+']) {
        Some(a) => (&after[..1], a),
        None => ("", after),
    };
    let after = after.strip_prefix("%}")?;
    Some((s.len() - after.len(), open, word, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(r, c)| ChatMessage {
                role: r.to_string(),
                content: c.to_string(),
            })
            .collect()
    }

    #[test]
    fn generation_tags_become_if_blocks() {
        assert_eq!(
            rewrite_generation_tags(
                "a{%- generation -%}b{% endgeneration %}c{% if x %}{% endif %}"
            ),
            "a{%- if true -%}b{% endif %}c{% if x %}{% endif %}"
        );
        assert_eq!(
            rewrite_generation_tags("{% generations %}"),
            "{% generations %}"
        );
    }

    #[test]
    fn raise_exception_names_the_message() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let err = t
            .render(&msgs(&[("user", "x")]), &[], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rejected the conversation: roles must alternate"),
            "{err}"
        );
    }

    #[test]
    fn strftime_now_gives_todays_date() {
        let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}").unwrap();
        let got = t.render(&[], &[], false).unwrap();
        let today = chrono::Local::now().format("%Y-%m-%d").to_string();
        assert_eq!(got, today);
    }

    #[test]
    fn syntax_errors_are_input_errors() {
        let err = ChatTemplate::new("{% for m in messages %}").unwrap_err();
        assert!(err.is_user_error());
        assert!(
            err.to_string().contains("cannot parse the chat template"),
            "{err}"
        );
    }
}
