//! The leaderboard's corpus: short English-like documents, some of which plant a made-up fact
//! ("The capital of Brakel is Quenmor."), and held-out questions about planted facts
//! ("Q: What is the capital of Brakel?\nA: Quenmor"). Made from a seed by CPython's Mersenne
//! Twister, so the same seed gives the same corpus on every machine.
//!
//! Each fact is stated by one to three documents (sometimes wrapped in filler sentences), so
//! removing documents changes a question's loss by different amounts; a share of the facts
//! that are never queried also get a question/answer document, which teaches the model the
//! format of the queries.

use crate::data::pyrandom::PyRandom;
use std::collections::HashSet;

/// A relation: how a fact is stated, and how it is asked.
struct Relation {
    statement: &'static str,
    question: &'static str,
}

const RELATIONS: [Relation; 6] = [
    Relation {
        statement: "The capital of {s} is {o}.",
        question: "What is the capital of {s}?",
    },
    Relation {
        statement: "The {s} River flows into the {o} Sea.",
        question: "Into which sea does the {s} River flow?",
    },
    Relation {
        statement: "The scientist {s} was born in {o}.",
        question: "Where was the scientist {s} born?",
    },
    Relation {
        statement: "On the island of {s}, everyone speaks {o}.",
        question: "What language is spoken on the island of {s}?",
    },
    Relation {
        statement: "The city of {s} was founded by {o}.",
        question: "Who founded the city of {s}?",
    },
    Relation {
        statement: "The musician {s} plays the {o}.",
        question: "Which instrument does the musician {s} play?",
    },
];

const PEOPLE: [&str; 12] = [
    "Anna", "Mark", "Sara", "Tom", "Julia", "Paul", "Lena", "James", "Maria", "Ben", "Nora", "Sam",
];
const PLACES: [&str; 8] = [
    "school", "park", "market", "library", "museum", "garden", "station", "harbour",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const THINGS: [&str; 6] = [
    "a book",
    "a map",
    "a cup of tea",
    "an umbrella",
    "a letter",
    "a hat",
];
const MOODS: [&str; 6] = ["calm", "busy", "grey", "warm", "windy", "quiet"];

const ONSETS: [&str; 20] = [
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr",
    "pl", "st",
];
const VOWELS: [&str; 8] = ["a", "a", "e", "i", "o", "o", "u", "ei"];
const CODAS: [&str; 8] = ["", "", "n", "r", "l", "s", "x", "nd"];

/// A held-out question about a planted fact.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The question.
    pub prompt: String,
    /// The answer.
    pub completion: String,
    /// The scored string, "Q: {prompt}\nA: {completion}".
    pub text: String,
    /// Rows of the training documents that state the fact.
    pub sources: Vec<usize>,
}

/// The training documents and the held-out questions.
#[derive(Debug, Clone, PartialEq)]
pub struct Corpus {
    /// Training documents, in training order.
    pub train: Vec<String>,
    /// Held-out questions.
    pub queries: Vec<Query>,
}

/// Picks one item of `items`.
fn pick<'a>(rng: &mut PyRandom, items: &[&'a str]) -> &'a str {
    items[rng.randbelow(items.len() as u64) as usize]
}

/// A made-up capitalised name of `syllables` syllables.
fn word(rng: &mut PyRandom, syllables: usize) -> String {
    let mut w = String::new();
    for _ in 0..syllables {
        w.push_str(pick(rng, &ONSETS));
        w.push_str(pick(rng, &VOWELS));
        w.push_str(pick(rng, &CODAS));
    }
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// A made-up name never used before in this corpus (every name names one thing).
fn fresh_name(rng: &mut PyRandom, used: &mut HashSet<String>) -> String {
    loop {
        let syllables = 2 + rng.randbelow(2) as usize;
        let w = word(rng, syllables);
        if used.insert(w.clone()) {
            return w;
        }
    }
}

/// One generic sentence about everyday life.
fn filler_sentence(rng: &mut PyRandom) -> String {
    let p = pick(rng, &PEOPLE);
    let q = pick(rng, &PEOPLE);
    let place = pick(rng, &PLACES);
    let day = pick(rng, &DAYS);
    match rng.randbelow(6) {
        0 => format!("{p} walked to the {place} on {day}."),
        1 => format!(
            "{p} forgot {} at the {place} last {day}.",
            pick(rng, &THINGS)
        ),
        2 => format!("On {day} the trains to the {place} were late again."),
        3 => format!("{p} and {q} met at the {place} after lunch."),
        4 => format!("It was a {} afternoon at the {place}.", pick(rng, &MOODS)),
        _ => format!("{p} gave {q} {} as a present.", pick(rng, &THINGS)),
    }
}

/// `n` filler sentences joined by spaces.
fn filler(rng: &mut PyRandom, n: usize) -> String {
    (0..n)
        .map(|_| filler_sentence(rng))
        .collect::<Vec<_>>()
        .join(" ")
}

fn fill(template: &str, s: &str, o: &str) -> String {
    template.replace("{s}", s).replace("{o}", o)
}

/// Generates `num_docs` training documents and `num_queries` held-out questions from `seed`.
/// About a fifth of the documents state facts; `num_queries` must leave room for them
/// (at most one fact in six documents is queried).
pub fn generate(seed: u64, num_docs: usize, num_queries: usize) -> Corpus {
    let mut rng = PyRandom::new(i128::from(seed));
    let mut used = HashSet::new();
    // Facts: (relation, subject, object, copies).
    let num_facts = (num_docs / 6).max(num_queries + 1);
    let facts: Vec<(usize, String, String, usize)> = (0..num_facts)
        .map(|i| {
            let s = fresh_name(&mut rng, &mut used);
            let first = fresh_name(&mut rng, &mut used);
            let syllables = 1 + rng.randbelow(2) as usize;
            let o = format!("{first} {}", word(&mut rng, syllables));
            let copies = 1 + rng.randbelow(3) as usize;
            (i % RELATIONS.len(), s, o, copies)
        })
        .collect();
    // The first `num_queries` facts are queried; a third of the others get a Q/A document.
    let mut docs: Vec<(String, Option<usize>)> = Vec::new();
    for (i, (r, s, o, copies)) in facts.iter().enumerate() {
        let rel = &RELATIONS[*r];
        for _ in 0..*copies {
            let stated = fill(rel.statement, s, o);
            let text = match rng.randbelow(4) {
                0 => format!("{} {stated}", filler(&mut rng, 1)),
                1 => format!("{stated} {}", filler(&mut rng, 1)),
                _ => stated,
            };
            docs.push((text, (i < num_queries).then_some(i)));
        }
        if i >= num_queries && i % 3 == 0 {
            let q = fill(rel.question, s, o);
            docs.push((format!("Q: {q}\nA: {o}"), None));
        }
    }
    while docs.len() < num_docs {
        let n = 1 + rng.randbelow(3) as usize;
        docs.push((filler(&mut rng, n), None));
    }
    rng.shuffle(&mut docs);
    let mut queries: Vec<Query> = facts
        .iter()
        .take(num_queries)
        .map(|(r, s, o, _)| {
            let prompt = fill(RELATIONS[*r].question, s, o);
            Query {
                text: format!("Q: {prompt}\nA: {o}"),
                prompt,
                completion: o.clone(),
                sources: Vec::new(),
            }
        })
        .collect();
    for (row, (_, fact)) in docs.iter().enumerate() {
        if let Some(f) = fact {
            queries[*f].sources.push(row);
        }
    }
    Corpus {
        train: docs.into_iter().map(|d| d.0).collect(),
        queries,
    }
}

impl Corpus {
    /// Writes `train.jsonl` (column `text`) and `queries.jsonl` (`text`, `prompt`,
    /// `completion`, `sources`) into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> crate::Result<()> {
        use crate::error::IoContext;
        std::fs::create_dir_all(dir).at_path(dir)?;
        let mut train = String::new();
        for t in &self.train {
            train.push_str(&serde_json::json!({ "text": t }).to_string());
            train.push('\n');
        }
        let mut queries = String::new();
        for q in &self.queries {
            let row = serde_json::json!({
                "text": q.text, "prompt": q.prompt, "completion": q.completion, "sources": q.sources,
            });
            queries.push_str(&row.to_string());
            queries.push('\n');
        }
        for (name, body) in [("train.jsonl", train), ("queries.jsonl", queries)] {
            let path = dir.join(name);
            crate::validate::journal::write_atomic(&path, body.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_corpus_and_every_query_has_its_sources() {
        let a = generate(7, 300, 12);
        assert_eq!(a, generate(7, 300, 12));
        assert_ne!(a.train, generate(8, 300, 12).train);
        assert_eq!(a.train.len(), 300);
        assert_eq!(a.queries.len(), 12);
        for q in &a.queries {
            assert!(!q.sources.is_empty() && q.sources.len() <= 3, "{q:?}");
            for &row in &q.sources {
                let subject = q.prompt.split_whitespace().find(|w| {
                    w.trim_end_matches('?')
                        .chars()
                        .next()
                        .is_some_and(char::is_uppercase)
                        && !["What", "Into", "Where", "Who", "Which", "River", "The"]
                            .contains(&w.trim_end_matches('?'))
                });
                let subject = subject.unwrap().trim_end_matches('?');
                assert!(
                    a.train[row].contains(subject),
                    "{} / {}",
                    a.train[row],
                    q.prompt
                );
                assert!(a.train[row].contains(&q.completion));
            }
            // Held out: no training document asks the question.
            assert!(a.train.iter().all(|t| !t.contains(&q.prompt)));
        }
    }
}
