//! The page as one self-contained HTML file: inline CSS and SVG, no scripts, fonts or images
//! from anywhere else, every text from the data escaped.

use std::fmt::Write;

use super::histogram::{histogram_svg, Histogram};
use super::page::{HeatMap, Hit, Page, Section, TokenScore};
use super::rows::DocText;

/// Bins of each score histogram.
const BINS: usize = 48;

/// Colour of supporting scores (RdBu blue) and opposing ones (RdBu red), as `r,g,b`.
const SUPPORT_RGB: &str = "67,147,195";
const OPPOSE_RGB: &str = "214,96,77";
/// Strongest heat-map tint: dark enough to read as a scale, light enough for black text.
const MAX_ALPHA: f64 = 0.85;

const STYLE: &str = r#"
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --panel:#f6f8fa; --accent:#0969da;
  --sup:rgb(67,147,195); --opp:rgb(214,96,77); }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:#fff;
  font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif; }
main { max-width:1180px; margin:0 auto; padding:28px 28px 48px; }
h1 { font-size:26px; margin:0 0 2px; letter-spacing:-0.01em; }
h1 .tool { color:var(--muted); font-weight:500; }
.subtitle { color:var(--muted); margin:0 0 16px; overflow-wrap:anywhere; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:3px 18px; margin:0 0 14px;
  padding:12px 16px; background:var(--panel); border:1px solid var(--line); border-radius:8px; }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; overflow-wrap:anywhere; }
ul.notes { margin:0 0 14px; padding:10px 16px 10px 34px; background:#fff8c5;
  border:1px solid #eed888; border-radius:8px; font-size:14px; }
nav.toc { display:flex; flex-wrap:wrap; gap:6px 8px; margin:10px 0 0; font-size:14px; }
nav.toc a { color:var(--accent); text-decoration:none; padding:2px 10px; border:1px solid var(--line);
  border-radius:999px; background:#fff; }
section.query { border:1px solid var(--line); border-radius:10px; padding:18px 22px 8px;
  margin:26px 0 0; }
section.query h2 { font-size:20px; margin:0 0 10px; }
.query-text { margin:0 0 10px; padding:8px 14px; background:var(--panel);
  border-left:4px solid var(--accent); border-radius:0 6px 6px 0; white-space:pre-wrap;
  overflow-wrap:anywhere; font-size:15px; }
details.queries summary { cursor:pointer; color:var(--muted); margin-bottom:8px; }
.summary { color:var(--muted); margin:0 0 10px; font-size:14px; }
.dist { display:flex; flex-wrap:wrap; align-items:center; gap:4px 24px; margin:4px 0 6px; }
svg.hist { max-width:100%; height:auto; }
svg.hist .bar.sup { fill:var(--sup); } svg.hist .bar.opp { fill:var(--opp); }
svg.hist .bar.faint { fill-opacity:.35; }
svg.hist .grid { stroke:#eef1f4; } svg.hist .base { stroke:#8c959f; }
svg.hist .zero { stroke:#57606a; stroke-dasharray:3 3; }
svg.hist text.axis { font-size:11px; fill:var(--muted); font-family:inherit; }
.stats { font-size:13px; color:var(--muted); display:grid; grid-template-columns:max-content max-content;
  gap:1px 12px; }
.stats b { color:var(--fg); font-weight:600; font-variant-numeric:tabular-nums; }
.lists { display:grid; grid-template-columns:repeat(auto-fit,minmax(440px,1fr)); gap:8px 22px; }
.list h3 { font-size:16px; margin:12px 0 8px; }
.list h3 .hint { color:var(--muted); font-weight:400; font-size:13px; margin-left:6px; }
ol.hits { list-style:none; margin:0; padding:0; }
li.hit { border:1px solid var(--line); border-left-width:4px; border-radius:6px; padding:7px 12px 9px;
  margin:0 0 10px; }
li.hit.sup { border-left-color:var(--sup); } li.hit.opp { border-left-color:var(--opp); }
.hit-head { display:flex; align-items:baseline; gap:10px; font-size:13px; color:var(--muted);
  margin-bottom:4px; }
.hit-head .rank { font-weight:700; color:var(--fg); }
.hit-head .score { margin-left:auto; font:600 13px ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
  padding:1px 8px; border-radius:999px; }
.score.sup { background:rgba(67,147,195,.16); color:#1d5a86; }
.score.opp { background:rgba(214,96,77,.16); color:#9b3223; }
.doc { white-space:pre-wrap; overflow-wrap:anywhere; font-size:14px; line-height:1.6; }
.doc .label { display:inline-block; font-size:11px; text-transform:uppercase; letter-spacing:.04em;
  color:var(--muted); border:1px solid var(--line); border-radius:4px; padding:0 5px; margin-right:6px; }
.doc.heat { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
  font-size:13px; line-height:1.85; }
.doc.heat .t { border-radius:2px; }
.doc.heat .t.none { color:var(--muted); }
.doc.heat .t.miss { background:repeating-linear-gradient(45deg,#e3e6ea 0 3px,#fff 3px 6px); }
.more, .unavailable { color:var(--muted); font-style:italic; font-size:13px; }
.legend { display:flex; align-items:center; gap:8px; font-size:12px; color:var(--muted); margin-top:6px; }
.legend .ramp { width:150px; height:10px; border-radius:3px; border:1px solid var(--line);
  background:linear-gradient(90deg,rgba(214,96,77,.85),#fff 50%,rgba(67,147,195,.85)); }
.legend .num { font-family:ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace; }
.empty { color:var(--muted); font-size:14px; }
p.missing { font-size:13px; color:#9a6700; margin:4px 0 12px; }
footer { margin-top:28px; color:var(--muted); font-size:12px; text-align:center; }
"#;

/// Renders `page` as a complete HTML document.
pub fn render(page: &Page) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(&page.title)
    );
    header(&mut s, page);
    for (i, section) in page.sections.iter().enumerate() {
        query_section(&mut s, i, section, page.higher_is_better);
    }
    s.push_str(
        "<footer>bergson report · a self-contained page: everything it shows is in this one \
         file</footer>\n</main>\n</body>\n</html>\n",
    );
    s
}

fn header(s: &mut String, page: &Page) {
    let _ = write!(
        s,
        "<header>\n<h1>Data attribution <span class=\"tool\">· bergson report</span></h1>\n\
         <p class=\"subtitle\">{}</p>\n<dl class=\"facts\">",
        escape(&page.title)
    );
    for (name, value) in &page.facts {
        let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(value));
    }
    s.push_str("</dl>\n");
    if !page.notes.is_empty() {
        s.push_str("<ul class=\"notes\">");
        for note in &page.notes {
            let _ = write!(s, "<li>{}</li>", escape(note));
        }
        s.push_str("</ul>\n");
    }
    if page.sections.len() > 1 {
        s.push_str("<nav class=\"toc\">");
        for (i, section) in page.sections.iter().enumerate() {
            let _ = write!(s, "<a href=\"#q{i}\">{}</a>", escape(&section.heading));
        }
        s.push_str("</nav>\n");
    }
    s.push_str("</header>\n");
}

fn query_section(s: &mut String, i: usize, section: &Section, higher_is_better: bool) {
    let _ = write!(
        s,
        "<section class=\"query\" id=\"q{i}\">\n<h2>{}</h2>\n",
        escape(&section.heading)
    );
    match section.queries.as_slice() {
        [] => {}
        [one] => query_text(s, one),
        many => {
            let _ = write!(
                s,
                "<details class=\"queries\" open><summary>{} queries</summary>",
                many.len()
            );
            for q in many {
                query_text(s, q);
            }
            s.push_str("</details>\n");
        }
    }
    if let Some(summary) = &section.summary {
        let _ = writeln!(s, "<p class=\"summary\">{}</p>", escape(summary));
    }
    if let Some(scores) = &section.distribution {
        distribution(s, scores, section, higher_is_better);
    }
    let (top_hint, bottom_hint) = if higher_is_better {
        ("highest scores · proponents", "lowest scores · opponents")
    } else {
        ("lowest scores · proponents", "highest scores · opponents")
    };
    s.push_str("<div class=\"lists\">\n");
    hit_list(
        s,
        "top",
        &format!("Top {}", section.top.len()),
        top_hint,
        &section.top,
        higher_is_better,
    );
    if !section.bottom.is_empty() {
        hit_list(
            s,
            "bottom",
            &format!("Bottom {}", section.bottom.len()),
            bottom_hint,
            &section.bottom,
            higher_is_better,
        );
    }
    s.push_str("</div>\n");
    if !section.missing.is_empty() {
        const SHOWN: usize = 20;
        let rows: Vec<String> = section
            .missing
            .iter()
            .take(SHOWN)
            .map(usize::to_string)
            .collect();
        let more = section.missing.len().saturating_sub(SHOWN);
        let _ = writeln!(
            s,
            "<p class=\"missing\">Missing (never written, not ranked): {} row{}: {}{}</p>",
            section.missing.len(),
            if section.missing.len() == 1 { "" } else { "s" },
            rows.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    s.push_str("</section>\n");
}

fn query_text(s: &mut String, text: &DocText) {
    s.push_str("<div class=\"query-text\">");
    doc_parts(s, text);
    s.push_str("</div>\n");
}

fn distribution(s: &mut String, scores: &[f64], section: &Section, higher_is_better: bool) {
    let Some(h) = Histogram::of(scores, BINS) else {
        s.push_str("<p class=\"empty\">No scores written.</p>\n");
        return;
    };
    let listed: Vec<f64> = section
        .top
        .iter()
        .chain(&section.bottom)
        .map(|h| h.score)
        .collect();
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    let _ = write!(
        s,
        "<div class=\"dist\">{}<div class=\"stats\"><span>scores</span><b>{}</b>\
         <span>min</span><b>{}</b><span>median</span><b>{}</b><span>mean</span><b>{}</b>\
         <span>max</span><b>{}</b>",
        histogram_svg(&h, &listed, higher_is_better),
        sorted.len(),
        escape(&format_score(sorted[0])),
        escape(&format_score(median)),
        escape(&format_score(mean)),
        escape(&format_score(sorted[sorted.len() - 1])),
    );
    if !section.missing.is_empty() {
        let _ = write!(s, "<span>missing</span><b>{}</b>", section.missing.len());
    }
    s.push_str("</div></div>\n");
}

fn hit_list(s: &mut String, class: &str, title: &str, hint: &str, hits: &[Hit], hib: bool) {
    let _ = write!(
        s,
        "<div class=\"list {class}\"><h3>{}<span class=\"hint\">{}</span></h3>",
        escape(title),
        escape(hint)
    );
    if hits.is_empty() {
        s.push_str("<p class=\"empty\">No rows with a written score.</p></div>\n");
        return;
    }
    let _ = write!(s, "<ol class=\"hits {class}\">");
    for hit in hits {
        let side = if supports(hit.score, hib) {
            "sup"
        } else {
            "opp"
        };
        let _ = write!(
            s,
            "<li class=\"hit {side}\" data-row=\"{}\" data-score=\"{}\"><div class=\"hit-head\">\
             <span class=\"rank\">#{}</span><span class=\"row\">row {}</span>\
             <span class=\"score {side}\" title=\"{}\">{}</span></div>",
            hit.row,
            hit.score,
            hit.rank,
            hit.row,
            hit.score,
            escape(&signed(hit.score)),
        );
        match (&hit.heat, &hit.text) {
            (Some(heat), _) => heat_map(s, heat, hib),
            (None, Some(text)) => {
                s.push_str("<div class=\"doc\">");
                doc_parts(s, text);
                if hit.omitted_chars > 0 {
                    let _ = write!(
                        s,
                        "<span class=\"more\"> … {} more characters</span>",
                        hit.omitted_chars
                    );
                }
                s.push_str("</div>");
            }
            (None, None) => s.push_str("<div class=\"unavailable\">text unavailable</div>"),
        }
        s.push_str("</li>\n");
    }
    s.push_str("</ol></div>\n");
}

fn doc_parts(s: &mut String, text: &DocText) {
    for part in text {
        if let Some(label) = &part.label {
            let _ = write!(s, "<span class=\"label\">{}</span>", escape(label));
        }
        s.push_str(&escape(&part.text));
        if part.label.is_some() {
            s.push('\n');
        }
    }
}

fn heat_map(s: &mut String, heat: &HeatMap, hib: bool) {
    let scale = heat.scale();
    s.push_str("<div class=\"doc heat\">");
    for span in &heat.spans {
        let tokens = if span.tokens.len() == 1 {
            format!("token {}", span.tokens.start)
        } else {
            format!("tokens {}–{}", span.tokens.start, span.tokens.end - 1)
        };
        match span.score {
            TokenScore::Scored(v) => {
                let alpha = if scale > 0.0 {
                    MAX_ALPHA * v.abs() / scale
                } else {
                    0.0
                };
                let rgb = if supports(v, hib) {
                    SUPPORT_RGB
                } else {
                    OPPOSE_RGB
                };
                let _ = write!(
                    s,
                    "<span class=\"t\" style=\"background:rgba({rgb},{alpha:.3})\" \
                     title=\"{tokens}: {}\">{}</span>",
                    escape(&signed(v)),
                    escape(&span.text)
                );
            }
            TokenScore::NoRow => {
                let _ = write!(
                    s,
                    "<span class=\"t none\" title=\"{tokens}: no score (no row in the store)\">{}</span>",
                    escape(&span.text)
                );
            }
            TokenScore::Missing => {
                let _ = write!(
                    s,
                    "<span class=\"t miss\" title=\"{tokens}: never written\">{}</span>",
                    escape(&span.text)
                );
            }
        }
    }
    if heat.omitted_tokens > 0 {
        let _ = write!(
            s,
            "<span class=\"more\"> … {} more tokens</span>",
            heat.omitted_tokens
        );
    }
    s.push_str("</div>");
    // The ramp runs from opposing (left) to supporting (right); its ends in raw scores.
    let (left, right) = if hib {
        (-scale, scale)
    } else {
        (scale, -scale)
    };
    let _ = write!(
        s,
        "<div class=\"legend\"><span>opposes</span><span class=\"num\">{}</span>\
         <span class=\"ramp\"></span><span class=\"num\">{}</span><span>supports</span>\
         <span>· per-token score</span></div>",
        escape(&signed(left)),
        escape(&signed(right))
    );
}

/// Whether a score supports the query under the run's orientation.
fn supports(score: f64, higher_is_better: bool) -> bool {
    if higher_is_better {
        score >= 0.0
    } else {
        score <= 0.0
    }
}

/// A score with its sign.
fn signed(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", format_score(v))
    } else {
        format_score(v)
    }
}

/// A score in about four significant digits; scientific notation for very large or small ones.
pub fn format_score(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn scores_read_in_four_digits() {
        assert_eq!(format_score(0.0), "0");
        assert_eq!(format_score(1.23456), "1.235");
        assert_eq!(format_score(-123.456), "-123.5");
        assert_eq!(format_score(0.0123456), "0.01235");
        assert_eq!(format_score(12345.6), "12346");
        assert_eq!(format_score(6.0e-8), "6.000e-8");
        assert_eq!(format_score(2.5e6), "2.500e6");
        assert_eq!(signed(2.0), "+2.000");
    }
}
