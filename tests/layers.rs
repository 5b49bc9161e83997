//! The library's layers, read from its source: every `crate::…` and `super::…` reference of
//! `src/` is an edge, and the test fails on an edge that points up the layers, on a cycle between
//! top-level modules or between the files of one folder, and on the command line reaching below
//! `src/commands` (no `clap`, no `crate::commands` in the library).
//!
//! Layers, from the top: commands (the binary) → experiment, report → attacks, defense →
//! features, heads → data, encoder → shared utilities. A module may use its own layer or those
//! below; within a layer the edges must not form a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the library and its layer (higher uses lower).
const LAYERS: &[(&str, usize)] = &[
    ("arrays_out", 0),
    ("atomic", 0),
    ("choice", 0),
    ("device", 0),
    ("input", 0),
    ("metrics", 0),
    ("optim", 0),
    ("progress", 0),
    ("resize", 0),
    ("rng", 0),
    ("data", 1),
    ("encoder", 1),
    ("features", 2),
    ("heads", 2),
    ("attacks", 3),
    ("defense", 3),
    ("experiment", 4),
    ("perf", 4),
    ("report", 5),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The library's files (the binary's `main.rs` and `commands/` left out), as paths under `src/`.
fn library_files() -> Vec<(Vec<String>, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel: Vec<String> = p.strip_prefix(src()).unwrap().iter().map(|c| c.to_string_lossy().to_string()).collect();
            if rel[0] == "commands" || rel[0] == "main.rs" {
                return None;
            }
            // Code only: comments may name anything.
            let text: String =
                std::fs::read_to_string(&p).unwrap().lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
            Some((rel, text))
        })
        .collect()
}

/// The module path of a file: `attacks/engine.rs` → [attacks, engine]; `attacks/mod.rs` → [attacks].
fn module_of(rel: &[String]) -> Vec<String> {
    let mut m: Vec<String> = rel.to_vec();
    let last = m.pop().unwrap();
    if last != "mod.rs" && last != "lib.rs" {
        m.push(last.trim_end_matches(".rs").to_string());
    }
    m
}

fn ident_at(text: &str, start: usize) -> String {
    text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// Every module path a file refers to, absolute (`crate::a::b`, `super::b`, `use crate::{a, b::c}`),
/// as far as it names modules: up to two segments below the crate.
fn references(module: &[String], text: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("crate::").chain(text.match_indices("super::")) {
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'$') {
            continue;
        }
        let (mut base, mut at) =
            if text[i..].starts_with("crate::") { (Vec::new(), i + 7) } else { (module[..module.len() - 1].to_vec(), i + 7) };
        while text[at..].starts_with("super::") {
            base.pop();
            at += 7;
        }
        let mut heads = Vec::new();
        let group = text[at..].starts_with('{');
        if group {
            // A use group: the first segment of every entry at depth one.
            let mut depth = 0;
            let mut expect = true;
            for (k, c) in text[at..].char_indices() {
                match c {
                    '{' => {
                        depth += 1;
                        expect = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect = true,
                    c if expect && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                        heads.push(ident_at(text, at + k));
                        expect = false;
                    }
                    _ => {}
                }
            }
        } else {
            heads.push(ident_at(text, at));
        }
        for h in heads {
            let mut path = base.clone();
            if h == "choices" && path.is_empty() {
                path.push("choice".into()); // the exported macro of choice.rs
            } else if h != "self" && h.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
                path.push(h.clone());
                let rest = if group { "" } else { &text[at + h.len()..] };
                if let Some(r) = rest.strip_prefix("::") {
                    let next = ident_at(r, 0);
                    if !next.is_empty() && next.chars().next().unwrap().is_lowercase() {
                        path.push(next);
                    }
                }
            }
            if !path.is_empty() {
                out.insert(path);
            }
        }
    }
    out
}

/// A cycle in `graph`, if any (as the nodes along it).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap();
                let mut c = stack[start..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn layers_point_down_and_nothing_cycles() {
    let layer: BTreeMap<&str, usize> = LAYERS.iter().copied().collect();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (rel, text) in library_files() {
        let module = module_of(&rel);
        let shown = rel.join("/");
        let Some(me) = module.first() else { continue };
        let Some(&my_layer) = layer.get(me.as_str()) else {
            problems.push(format!("{shown}: module '{me}' has no layer in tests/layers.rs"));
            continue;
        };
        for r in references(&module, &text) {
            let target = &r[0];
            if target == me {
                // Within a folder: an edge between two of its files or subfolders (its mod.rs,
                // the folder's face, aside).
                let part =
                    |name: &str| src().join(me).join(format!("{name}.rs")).is_file() || src().join(me).join(name).join("mod.rs").is_file();
                if module.len() >= 2 && r.len() >= 2 && r[1] != module[1] && part(&r[1]) {
                    files.entry(format!("{me}/{}", module[1])).or_default().insert(format!("{me}/{}", r[1]));
                }
                continue;
            }
            top.entry(me.clone()).or_default().insert(target.clone());
            match layer.get(target.as_str()) {
                Some(&l) if l > my_layer => {
                    problems.push(format!("{shown}: '{me}' (layer {my_layer}) uses '{target}' (layer {l}), above it"))
                }
                Some(_) => {}
                None => problems.push(format!("{shown}: uses 'crate::{target}', not a library module with a layer")),
            }
        }
        if text.contains("clap") {
            problems.push(format!("{shown}: mentions clap; the command line belongs in src/commands"));
        }
    }
    if let Some(c) = cycle(&top) {
        problems.push(format!("a cycle between top-level modules: {}", c.join(" -> ")));
    }
    if let Some(c) = cycle(&files) {
        problems.push(format!("a cycle between the files of a folder: {}", c.join(" -> ")));
    }
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    if lib.contains("mod commands") {
        problems.push("src/lib.rs: the library declares the command line (mod commands)".into());
    }
    assert!(problems.is_empty(), "{} layering problem(s):\n{}", problems.len(), problems.join("\n"));
    // The check sees what it should: the runner uses the attacks, and no module uses the report.
    assert!(top["experiment"].contains("attacks") && top["report"].contains("experiment"), "{top:?}");
}

/// The reader itself, on the forms the source uses.
#[test]
fn references_are_read_from_paths_and_use_groups() {
    let m = |s: &str| s.split('/').map(String::from).collect::<Vec<_>>();
    let r = references(&m("attacks/engine"), "use super::problem::{Best, Problem};\nuse crate::{data::x, encoder::Encoder};\nlet a = crate::rng::stream(1, 2);\ncrate::choices!(X { A = \"a\" });");
    let want: BTreeSet<Vec<String>> = [m("attacks/problem"), m("data"), m("encoder"), m("rng/stream"), m("choice")].into_iter().collect();
    assert_eq!(r, want);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    assert_eq!(cycle(&g), None);
    g.entry("b".into()).or_default().insert("a".into());
    assert!(cycle(&g).is_some());
}
