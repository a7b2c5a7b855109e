//! The module ladder of `src/` (see the crate doc): read off the source files themselves.
//! A module names another through `crate::NAME` in code (comments do not count); the graph of top-level modules must have
//! no cycle, the leaves must name nothing, and the data plane must never name the control
//! plane or the wiring above it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that import nothing from the crate.
const LEAVES: &[&str] = &["backoff", "clock", "http1", "http_client", "path", "reason"];
/// Modules above the data plane: only these may name `control`.
const ABOVE_DATA_PLANE: &[&str] = &["control", "app", "dev"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        // Code only: a comment that mentions a module is no dependency.
        let text: String = std::fs::read_to_string(&file)
            .expect("read")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let names = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                !name.is_empty(),
                "{}: grouped `crate::{{…}}` imports hide what a module names; write one path per module",
                rel.display()
            );
            if name != module {
                names.insert(name);
            }
        }
    }
    graph
}

/// The data plane never names the control plane, the wiring or `jwtgate dev`.
#[test]
fn data_plane_never_names_the_control_plane() {
    let graph = graph();
    for (module, names) in &graph {
        if ABOVE_DATA_PLANE.contains(&module.as_str()) {
            continue;
        }
        for above in ABOVE_DATA_PLANE {
            assert!(
                !names.contains(*above),
                "`{module}` names `crate::{above}`: the data plane must not depend on it"
            );
        }
    }
    // `control` itself sits beside the data plane, below the wiring.
    for above in ["app", "dev"] {
        assert!(!graph["control"].contains(above), "control names {above}");
    }
}

/// Leaves import nothing from the crate.
#[test]
fn leaves_name_nothing() {
    let graph = graph();
    for leaf in LEAVES {
        let names = graph
            .get(*leaf)
            .unwrap_or_else(|| panic!("no module {leaf}"));
        assert!(names.is_empty(), "leaf `{leaf}` names {names:?}");
    }
}

/// No two top-level modules depend on each other, directly or through others.
#[test]
fn no_cycles_between_top_level_modules() {
    let graph = graph();
    // Depth-first search with colours: grey on the stack, black done.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        grey: &mut Vec<&'a str>,
        black: &mut BTreeSet<&'a str>,
    ) {
        if black.contains(node) {
            return;
        }
        if let Some(at) = grey.iter().position(|n| *n == node) {
            panic!("cycle: {} -> {node}", grey[at..].join(" -> "));
        }
        grey.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, grey, black);
        }
        grey.pop();
        black.insert(node);
    }
    let mut black = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut black);
    }
    assert!(black.len() >= 20, "the scan found the modules: {black:?}");
}

/// No source file outgrows a reviewer's attention.
#[test]
fn no_source_file_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        // Unit tests at the bottom do not count.
        let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
        let lines = code.lines().count();
        assert!(lines <= 600, "{} has {lines} lines of code", file.display());
    }
}
