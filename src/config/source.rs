//! Reading a YAML file into a `serde_norway::Value` while remembering where every node
//! stands, so that problems found at any later phase can name their line and column.

use std::collections::HashMap;
use std::fmt;

use serde_norway::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One problem in a configuration file, with the key path it concerns and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `routes[2].auth.issuers[0]` (empty for the whole file).
    pub path: String,
    /// 1-based line (0 when the file could not be read).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.line, self.column, self.path, self.message
            )
        }
    }
}

/// All problems of one configuration file; `Display` prints one per line.
#[derive(Debug, Clone)]
pub struct Problems {
    /// The file, as given on the command line.
    pub file: String,
    /// Every problem found.
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.list.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}", self.file, p)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Positions of every node by key path (`routes[2].auth.issuers[0]`), 1-based.
#[derive(Debug, Default)]
pub struct Positions {
    by_path: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Where `path` stands; falls back to its closest ancestor, then to the top of the file.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.by_path.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.by_path.get("").copied().unwrap_or((1, 1)),
            }
        }
    }

    pub fn problem(&self, path: &str, message: impl Into<String>) -> Problem {
        let (line, column) = self.locate(path);
        Problem {
            path: path.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct Recorder {
    stack: Vec<Frame>,
    positions: Positions,
}

impl Recorder {
    /// The path of the node that the event at hand starts, advancing the parent's cursor.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| {
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }
            }),
        }
    }

    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if self.is_key_position() {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        let full = if path.is_empty() {
                            value.clone()
                        } else {
                            format!("{path}.{value}")
                        };
                        self.positions.by_path.insert(full, pos);
                        *key = Some(value);
                    }
                } else if let Some(p) = self.next_path() {
                    self.positions.by_path.entry(p).or_insert(pos);
                }
            }
            Event::Alias(_) => {
                let _ = self.next_path();
            }
            Event::MappingStart(..) => {
                let path = self.next_path().unwrap_or_default();
                self.positions.by_path.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path().unwrap_or_default();
                self.positions.by_path.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Parse `text`, expand `${VAR}` in every string scalar from `env`, and return the tree
/// with the positions of its nodes.
pub fn load(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Value, Positions), Vec<Problem>> {
    let mut recorder = Recorder {
        stack: Vec::new(),
        positions: Positions::default(),
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut recorder, false) {
        let m = e.marker();
        return Err(vec![Problem {
            path: String::new(),
            line: m.line(),
            column: m.col() + 1,
            message: format!("invalid YAML: {}", e.info()),
        }]);
    }
    let positions = recorder.positions;
    let mut value: Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            return Err(vec![Problem {
                path: String::new(),
                line,
                column,
                message: format!("invalid YAML: {e}"),
            }]);
        }
    };
    let mut problems = Vec::new();
    expand(&mut value, String::new(), env, &positions, &mut problems);
    if problems.is_empty() {
        Ok((value, positions))
    } else {
        Err(problems)
    }
}

fn expand(
    value: &mut Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    positions: &Positions,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(msg) => problems.push(positions.problem(&path, msg)),
        },
        Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                expand(v, format!("{path}[{i}]"), env, positions, problems);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand(v, child, env, positions, problems);
            }
        }
        Value::Tagged(t) => expand(&mut t.value, path, env, positions, problems),
        _ => {}
    }
}

/// `${NAME}` → the variable's value; `$${` stays a literal `${`. An unset variable is an
/// error rather than an empty string: an empty secret must never pass silently.
fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated ${…} reference".to_owned())?;
            let name = &tail[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid environment variable name `{name}`"));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cr:et\nx".to_owned())
    }

    /// Positions name the line and column of nested keys and sequence items.
    #[test]
    fn positions_of_nested_nodes() {
        let text = "a:\n  b: 1\nlist:\n  - x: 2\n  - y: 3\n";
        let (_, pos) = load(text, &env).expect("valid");
        assert_eq!(pos.locate("a.b"), (2, 3));
        assert_eq!(pos.locate("list[1].y"), (5, 5));
        assert_eq!(pos.locate("list[1].y.missing"), (5, 5));
    }

    /// `${VAR}` expands inside string values only, so a secret cannot inject YAML.
    #[test]
    fn env_expansion_is_value_only() {
        let (v, _) = load("k: \"${SECRET}\"\nl: $${LIT}\n", &env).expect("valid");
        assert_eq!(v["k"].as_str(), Some("s3cr:et\nx"));
        assert_eq!(v["l"].as_str(), Some("${LIT}"));
        let errs = load("k: ${NOPE}\n", &env).expect_err("unset");
        assert!(errs[0].message.contains("NOPE"));
        assert_eq!((errs[0].line, errs[0].column), (1, 1));
    }
}
