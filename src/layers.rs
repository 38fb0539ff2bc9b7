//! The layers of docs/ARCHITECTURE.md, enforced: a module may import only the modules of the layers
//! below it, the pure layers (`reward`, `api`) never touch llama.cpp or tokio, and no two modules
//! of one layer import each other, directly or around a cycle. Read from the source files
//! themselves, so a new `use` that breaks a rule fails here, naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the library and the modules it may import. The order is the layers',
/// bottom first; ARCHITECTURE.md draws the same graph.
const ALLOWED: &[(&str, &[&str])] = &[
    ("reward", &[]),
    ("api", &["reward"]),
    ("paths", &[]),
    ("progress", &[]),
    ("jsonl", &[]),
    ("catalog", &["paths"]),
    ("pull", &["catalog", "progress"]),
    ("engine", &["api", "reward"]),
    ("config", &["catalog", "engine", "paths"]),
    ("offline", &["api", "engine", "jsonl", "progress"]),
    ("eval", &["api", "engine", "reward", "jsonl", "progress"]),
    ("bench", &["api", "engine", "reward"]),
    (
        "server",
        &[
            "api", "catalog", "config", "engine", "paths", "reward", "web",
        ],
    ),
    ("web", &[]),
];

/// What the pure layers must not name.
const IMPURE: &[&str] = &["llama_cpp", "tokio", "crate::engine", "std::fs", "std::net"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The top-level module a library file belongs to (`engine` for `src/engine/scorer.rs` and
/// `src/engine.rs`); `None` for `lib.rs`, this file and the binary's.
fn top_module(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "layers" | "bin")).then(|| name.to_owned())
}

/// The code of a file without its comments (so docs may name any module).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow `prefix` in `code` (`crate::` → `engine`, `api`...).
fn after(code: &str, prefix: &str) -> BTreeSet<String> {
    code.match_indices(prefix)
        .filter(|(i, _)| {
            // Not part of a longer path such as `super::super::`.
            *i == 0 || !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
        })
        .filter_map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut broken = Vec::new();
    for path in files(&src()) {
        let Some(module) = top_module(&path) else {
            continue;
        };
        let Some(may) = allowed.get(module.as_str()) else {
            broken.push(format!(
                "{}: module `{module}` is in no layer",
                path.display()
            ));
            continue;
        };
        for used in after(&code(&path), "crate::") {
            if used != module && !may.contains(&used.as_str()) {
                broken.push(format!("{}: `{module}` imports `{used}`", path.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports across layers:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_pure_layers_touch_neither_llama_cpp_nor_io() {
    let mut broken = Vec::new();
    for path in files(&src()) {
        if !matches!(top_module(&path).as_deref(), Some("reward" | "api")) {
            continue;
        }
        let code = code(&path);
        for name in IMPURE {
            if code.contains(name) {
                broken.push(format!("{} names {name}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The modules of one directory and what each imports of its siblings: `super::x` where `x` is a
/// sibling, or a name the directory's `mod.rs` re-exports from one. Files in a subdirectory count
/// as their parent module's; `tests.rs` files are test code and left out.
fn sibling_imports(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let siblings: BTreeSet<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_stem()?.to_str()?.to_owned();
            let module = path.is_dir() || path.extension().is_some_and(|x| x == "rs");
            (module && stem != "mod" && stem != "tests").then_some(stem)
        })
        .collect();
    // `pub use scorer::{Scored, Scorer};` in mod.rs: `Scorer` comes from `scorer`.
    let mut exported: BTreeMap<String, String> = BTreeMap::new();
    let parent = code(&dir.join("mod.rs"));
    for statement in parent.split(';') {
        let statement = statement.trim();
        let Some(rest) = statement
            .strip_prefix("pub use ")
            .or_else(|| statement.strip_prefix("pub(crate) use "))
            .or_else(|| statement.strip_prefix("pub(super) use "))
        else {
            continue;
        };
        let Some((from, names)) = rest.split_once("::") else {
            continue;
        };
        if !siblings.contains(from) {
            continue;
        }
        let names = names.trim_matches(|c| c == '{' || c == '}');
        for name in names.split(',') {
            let name = name.split(" as ").last().unwrap_or("").trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            if !name.is_empty() {
                exported.insert(name.to_owned(), from.to_owned());
            }
        }
    }
    let mut imports = BTreeMap::new();
    for sibling in &siblings {
        let single = dir.join(format!("{sibling}.rs"));
        let nested = dir.join(sibling);
        let mut sources: Vec<PathBuf> = files(&nested);
        if single.is_file() {
            sources.push(single);
        }
        let mut used = BTreeSet::new();
        for source in sources {
            if source.file_stem().is_some_and(|s| s == "tests") {
                continue;
            }
            let code = code(&source);
            let mut names = after(&code, "super::");
            // `use super::{a, b::C, D}`: every name in the braces.
            for (i, _) in code.match_indices("super::{") {
                let rest = &code[i + "super::{".len()..];
                let inner = rest.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let first = item.trim().split("::").next().unwrap_or("").trim();
                    if !first.is_empty() {
                        names.insert(first.to_owned());
                    }
                }
            }
            for name in names {
                let target = if siblings.contains(&name) {
                    Some(name)
                } else {
                    exported.get(&name).cloned()
                };
                if let Some(target) = target.filter(|t| t != sibling) {
                    used.insert(target);
                }
            }
        }
        imports.insert(sibling.clone(), used);
    }
    imports
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_modules_of_a_layer_import_each_other() {
    let mut cycles = Vec::new();
    for module in ["engine", "server", "eval", "config", "api"] {
        let graph = sibling_imports(&src().join(module));
        if let Some(found) = cycle(&graph) {
            cycles.push(format!("{module}: {}", found.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let acyclic: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec![])]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(cycle(&acyclic), None);
}

#[test]
fn imports_are_read_from_paths_not_comments() {
    let code =
        code_of("use crate::engine::Model; // crate::server is not used\nlet x = crate::api::X;");
    assert_eq!(
        after(&code, "crate::"),
        BTreeSet::from(["api".to_owned(), "engine".to_owned()])
    );
}

fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}
