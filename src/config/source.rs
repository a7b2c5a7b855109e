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
    /// Values that came from `${VAR}` and the reference they came from: a message never
    /// prints a secret it was given through the environment.
    expanded: Vec<(String, String)>,
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
        let mut message = message.into();
        for (value, reference) in &self.expanded {
            if message.contains(value.as_str()) {
                message = message.replace(value.as_str(), reference);
            }
        }
        Problem {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

/// Bounds on what a configuration file may make the parser build: a file past them is
/// refused before it is turned into a tree (deep nesting would exhaust the stack, aliases
/// can expand a few lines into gigabytes).
pub const MAX_BYTES: usize = 1024 * 1024;
pub const MAX_DEPTH: usize = 64;
pub const MAX_NODES: u64 = 100_000;

struct Recorder {
    stack: Vec<Frame>,
    positions: Positions,
    /// Nodes the tree will hold once every alias is expanded.
    nodes: u64,
    /// Expanded node count of each anchor.
    anchors: HashMap<usize, u64>,
    /// The anchor and node count at the start of each open collection.
    open: Vec<(usize, u64)>,
    /// The first bound exceeded.
    over: Option<Problem>,
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

impl Recorder {
    /// Count nodes (aliases as what they expand to) and depth; note the first bound passed.
    fn bound(&mut self, ev: &Event, pos: (usize, usize)) {
        match ev {
            Event::Scalar(_, _, anchor, _) => {
                self.nodes += 1;
                if *anchor > 0 {
                    self.anchors.insert(*anchor, 1);
                }
            }
            Event::Alias(id) => {
                self.nodes = self
                    .nodes
                    .saturating_add(self.anchors.get(id).copied().unwrap_or(1));
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                self.nodes += 1;
                self.open.push((*anchor, self.nodes));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((anchor, start)) = self.open.pop() {
                    if anchor > 0 {
                        self.anchors.insert(anchor, self.nodes - start + 1);
                    }
                }
            }
            _ => {}
        }
        let message = if self.open.len() > MAX_DEPTH {
            format!("nested deeper than {MAX_DEPTH} levels: a configuration is never that deep")
        } else if self.nodes > MAX_NODES {
            format!("more than {MAX_NODES} values once aliases are expanded (an alias bomb?)")
        } else {
            return;
        };
        self.over = Some(Problem {
            path: String::new(),
            line: pos.0,
            column: pos.1,
            message,
        });
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        if self.over.is_some() {
            return;
        }
        self.bound(&ev, pos);
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
    if text.len() > MAX_BYTES {
        return Err(vec![Problem {
            path: String::new(),
            line: 1,
            column: 1,
            message: format!("the file is larger than {MAX_BYTES} bytes"),
        }]);
    }
    let mut recorder = Recorder {
        stack: Vec::new(),
        positions: Positions::default(),
        nodes: 0,
        anchors: HashMap::new(),
        open: Vec::new(),
        over: None,
    };
    // Events one by one (the parser's own `load` recurses per nesting level and can
    // overflow a small stack); stop at the first bound passed.
    let mut parser = Parser::new_from_str(text);
    let parsed = loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break Ok(()),
            Ok((ev, mark)) => {
                recorder.on_event(ev, mark);
                if recorder.over.is_some() {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(problem) = recorder.over {
        return Err(vec![problem]);
    }
    if let Err(e) = parsed {
        let m = e.marker();
        return Err(vec![Problem {
            path: String::new(),
            line: m.line(),
            column: m.col() + 1,
            message: format!("invalid YAML: {}", e.info()),
        }]);
    }
    let mut positions = recorder.positions;
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
    let mut expanded = Vec::new();
    expand(
        &mut value,
        String::new(),
        env,
        &positions,
        &mut problems,
        &mut expanded,
    );
    // Short values (`1`, `on`) would redact more than they protect. A message may print a
    // value escaped (serde quotes strings with `\n`, `\"`): redact that form too, and the
    // longest values first so that one secret inside another leaves nothing behind.
    let mut redact: Vec<(String, String)> = Vec::new();
    for (value, reference) in expanded.into_iter().filter(|(v, _)| v.len() >= 4) {
        let quoted = format!("{value:?}");
        let escaped = quoted[1..quoted.len() - 1].to_owned();
        if escaped != value {
            redact.push((escaped, reference.clone()));
        }
        redact.push((value, reference));
    }
    redact.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    positions.expanded = redact;
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
    expanded: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(s) if s.contains("${") => match expand_str(s, env, expanded) {
            Ok(result) => *s = result,
            Err(msg) => problems.push(positions.problem(&path, msg)),
        },
        Value::Sequence(seq) => {
            for (i, v) in seq.iter_mut().enumerate() {
                expand(
                    v,
                    format!("{path}[{i}]"),
                    env,
                    positions,
                    problems,
                    expanded,
                );
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
                expand(v, child, env, positions, problems, expanded);
            }
        }
        Value::Tagged(t) => expand(&mut t.value, path, env, positions, problems, expanded),
        _ => {}
    }
}

/// `${NAME}` → the variable's value; `$${` stays a literal `${`. An unset variable is an
/// error rather than an empty string: an empty secret must never pass silently.
fn expand_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    expanded: &mut Vec<(String, String)>,
) -> Result<String, String> {
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
                Some(v) => {
                    out.push_str(&v);
                    expanded.push((v, format!("${{{name}}}")));
                }
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

    /// Deep nesting, alias bombs and huge files are refused before a tree is built.
    #[test]
    fn bounds() {
        // 12 KB of nesting once aborted the process on reload (stack overflow).
        let deep = format!("a: {}1{}\n", "[".repeat(6000), "]".repeat(6000));
        let e = load(&deep, &env).expect_err("deep");
        assert!(
            e[0].message.contains("nested deeper") || e[0].message.contains("recursion limit"),
            "{e:?}"
        );
        let deep_block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect();
        let e = load(&deep_block, &env).expect_err("deep");
        assert!(e[0].message.contains("nested deeper"), "{e:?}");
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = load(&bomb, &env).expect_err("bomb");
        assert!(e[0].message.contains("aliases"), "{e:?}");
        let big = format!("k: \"{}\"\n", "x".repeat(MAX_BYTES));
        assert!(load(&big, &env).is_err());
        // A few aliases are fine.
        assert!(load("a: &x [1, 2]\nb: *x\nc: *x\n", &env).is_ok());
    }

    /// A problem about an expanded value names the variable, never its value.
    #[test]
    fn expanded_values_are_redacted() {
        let (_, pos) = load("k: \"${SECRET}\"\n", &env).expect("valid");
        let p = pos.problem("k", "`s3cr:et\nx` is not an address");
        assert_eq!(p.message, "`${SECRET}` is not an address");
        // As serde prints it in "invalid type" messages: escaped.
        let p = pos.problem("k", "invalid type: string \"s3cr:et\\nx\", expected u64");
        assert!(!p.message.contains("s3cr"), "{}", p.message);
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
