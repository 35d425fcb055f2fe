//! The synthetic-people fact set of Bergson's recall evaluation, generated exactly as Python
//! Bergson 2.5.1's `recall/facts.py` draws it: Python's `random.Random(seed)` shuffles the name
//! lists, then draws each person's birthdate, employer, birthplace and university, and every
//! paraphrase template of a field becomes one statement.

use std::path::Path;

use chrono::{Duration, NaiveDate};

use crate::data::pyrandom::PyRandom;
use crate::{Error, Result};

/// The fields of a profile, in the order statements are generated (Bergson's `fields` dict).
pub const FIELDS: [&str; 4] = ["birthplace", "birthdate", "employer", "university"];

/// The question asked about each field (Bergson's `QUESTION_TEMPLATES`).
fn question_template(field: &str) -> &'static str {
    match field {
        "birthdate" => "When was {first_name} {last_name} born?",
        "birthplace" => "Where was {first_name} {last_name} born?",
        "employer" => "Where does {first_name} {last_name} work?",
        _ => "What university did {first_name} {last_name} attend?",
    }
}

/// One synthetic person.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Row number of the person (0-based).
    pub identifier: i64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Birthdate, printed as Python's `strftime("%d %B %Y")` (`05 March 1997`).
    pub birthdate: String,
    /// Town of birth.
    pub birthplace: String,
    /// Employer.
    pub employer: String,
    /// University.
    pub university: String,
}

impl Profile {
    /// The value a template's `{name}` placeholder stands for.
    fn value(&self, key: &str) -> Option<String> {
        Some(match key {
            "identifier" => self.identifier.to_string(),
            "first_name" => self.first_name.clone(),
            "last_name" => self.last_name.clone(),
            "birthdate" => self.birthdate.clone(),
            "birthplace" => self.birthplace.clone(),
            "employer" => self.employer.clone(),
            "university" => self.university.clone(),
            _ => return None,
        })
    }

    /// The person's value of `field` (the answer to its question).
    pub fn field(&self, field: &str) -> String {
        self.value(field).unwrap_or_default()
    }
}

/// One statement: a paraphrase of one fact about one person.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The fact's value.
    pub answer: String,
    /// The statement text.
    pub fact: String,
    /// Which field it states.
    pub field: &'static str,
    /// The person.
    pub identifier: i64,
    /// The question it answers.
    pub question: String,
    /// Which paraphrase template made it.
    pub template: i64,
}

/// Lines of a source list as Python's `[line.strip() for line in f]`.
fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::input(format!(
            "cannot read {} ({e}); --data_dir must hold the recall source lists names/{{first_name,last_name,employer,town,university}}.txt and templates/{{birthplace,birthdate,employer,university}}.txt",
            path.display()
        ))
    })?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

/// Python's `seq[random._randbelow(len(seq))]` (`random.choice`).
fn choice<'a>(rng: &mut PyRandom, seq: &'a [String], what: &str) -> Result<&'a String> {
    if seq.is_empty() {
        return Err(Error::input(format!(
            "the recall name list {what}.txt is empty; add at least one line"
        )));
    }
    Ok(&seq[rng.randbelow(seq.len() as u64) as usize])
}

/// The profiles Bergson's `generate_profiles(seed, data_dir)` yields, at most `limit` of them.
pub fn generate_profiles(data_dir: &Path, seed: i64, limit: usize) -> Result<Vec<Profile>> {
    let names = data_dir.join("names");
    let mut rng = PyRandom::new(seed as i128);
    let mut lists = Vec::new();
    for what in ["first_name", "last_name", "employer", "town", "university"] {
        let mut list = read_list(&names.join(format!("{what}.txt")))?;
        rng.shuffle(&mut list);
        lists.push(list);
    }
    let [first, last, employers, towns, universities] = <[Vec<String>; 5]>::try_from(lists)
        .unwrap_or_else(|_| unreachable!("five lists were read"));
    let start = NaiveDate::from_ymd_opt(1995, 7, 2).expect("a valid date");
    let end = NaiveDate::from_ymd_opt(2000, 2, 14).expect("a valid date");
    let span_days = (end - start).num_days() as u64;
    let mut out = Vec::new();
    for (i, (first, last)) in first.iter().zip(&last).enumerate().take(limit) {
        // `randint(0, days)` is `_randbelow(days + 1)`; keyword arguments are evaluated in
        // source order: employer, birthplace, university.
        let days = rng.randbelow(span_days + 1) as i64;
        let birthdate = (start + Duration::days(days))
            .format("%d %B %Y")
            .to_string();
        let employer = choice(&mut rng, &employers, "employer")?.clone();
        let birthplace = choice(&mut rng, &towns, "town")?.clone();
        let university = choice(&mut rng, &universities, "university")?.clone();
        out.push(Profile {
            identifier: i as i64,
            first_name: first.clone(),
            last_name: last.clone(),
            birthdate,
            birthplace,
            employer,
            university,
        });
    }
    Ok(out)
}

/// Python's `template.format(**profile)` for `{name}` placeholders and `{{`/`}}` escapes.
pub fn format_template(template: &str, profile: &Profile) -> Result<String> {
    let bad = |why: &str| {
        Error::input(format!(
            "recall template {template:?}: {why}; templates may use {{identifier}}, {{first_name}}, {{last_name}}, {{birthdate}}, {{birthplace}}, {{employer}}, {{university}} and {{{{ }}}} for braces"
        ))
    };
    let mut out = String::with_capacity(template.len() + 32);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '{' => {
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(k) => key.push(k),
                        None => return Err(bad("a '{' is never closed")),
                    }
                }
                let value = profile
                    .value(&key)
                    .ok_or_else(|| bad(&format!("unknown placeholder {{{key}}}")))?;
                out.push_str(&value);
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '}' => return Err(bad("a single '}' (write '}}' for a brace)")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Bergson's `fact_generator(num_facts = 4·num_people)`: every template of every field of the
/// first `num_people` profiles, in generation order.
pub fn generate_statements(
    data_dir: &Path,
    seed: i64,
    num_people: usize,
) -> Result<Vec<Statement>> {
    let templates_dir = data_dir.join("templates");
    let templates = FIELDS
        .iter()
        .map(|f| read_list(&templates_dir.join(format!("{f}.txt"))))
        .collect::<Result<Vec<_>>>()?;
    let profiles = generate_profiles(data_dir, seed, num_people)?;
    let mut out = Vec::new();
    for p in &profiles {
        let question_of = |field: &str| format_template(question_template(field), p);
        for (field, templates) in FIELDS.iter().zip(&templates) {
            let question = question_of(field)?;
            for (i, t) in templates.iter().enumerate() {
                out.push(Statement {
                    answer: p.field(field),
                    fact: format_template(t, p)?,
                    field,
                    identifier: p.identifier,
                    question: question.clone(),
                    template: i as i64,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            identifier: 3,
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            birthdate: "10 December 1995".into(),
            birthplace: "London".into(),
            employer: "Babbage".into(),
            university: "None".into(),
        }
    }

    #[test]
    fn templates_format_like_str_format() {
        let p = profile();
        assert_eq!(
            format_template(
                "{first_name} {{x}} was born in {birthplace} ({identifier})",
                &p
            )
            .unwrap(),
            "Ada {x} was born in London (3)"
        );
        for bad in ["{nope}", "{first_name", "a } b"] {
            let e = format_template(bad, &p).unwrap_err().to_string();
            assert!(e.contains("recall template"), "{e}");
        }
    }

    #[test]
    fn profiles_replay_pythons_random_draws() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("names");
        std::fs::create_dir_all(&names).unwrap();
        let write = |f: &str, items: &[&str]| {
            std::fs::write(names.join(f), items.join("\n") + "\n").unwrap();
        };
        write("first_name.txt", &["A", "B", "C", "D"]);
        write("last_name.txt", &["W", "X", "Y", "Z"]);
        write("employer.txt", &["e1", "e2", "e3"]);
        write("town.txt", &["t1", "t2"]);
        write("university.txt", &["u1", "u2", "u3", "u4", "u5"]);
        let got = generate_profiles(dir.path(), 0, 10).unwrap();
        // Python 3.11: bergson.recall.facts.generate_profiles(0, <dir>) on these lists.
        let want = [
            ("C", "W", "29 January 1997", "e1", "t1", "u3"),
            ("A", "X", "25 December 1999", "e3", "t1", "u5"),
            ("B", "Z", "20 January 1996", "e2", "t1", "u5"),
            ("D", "Y", "22 February 1998", "e2", "t1", "u5"),
        ];
        assert_eq!(got.len(), want.len());
        for (p, w) in got.iter().zip(want) {
            let have = (
                p.first_name.as_str(),
                p.last_name.as_str(),
                p.birthdate.as_str(),
                p.employer.as_str(),
                p.birthplace.as_str(),
                p.university.as_str(),
            );
            assert_eq!(have, w);
        }
    }
}
