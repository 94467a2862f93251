//! The module layering `src/lib.rs` describes, checked on the source text, tests included (a module's
//! `#[cfg(test)]` code and its `tests.rs` files count with it): which top-level modules each one names
//! (`crate::<module>` paths in code, comments left out), each only below its own layer; no folder whose
//! files name each other in a circle (its `mod.rs` counted as a file); and pass options read by serde only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules (`src/<name>.rs` or `src/<name>/`), bottom up: a module may name the
/// modules of the layers below its own, not those beside or above it. The `dfast` binary (`cli.rs`) is the
/// layer above them all.
const LAYERS: [&[&str]; 8] = [
    &["error"],
    &["settings"],
    &["onnx", "host", "files", "hub"],
    &["runtime"],
    &["manifest", "scheduler"],
    &["passes", "pipeline"],
    &["convert", "inspect"],
    &["bench", "tune"],
];

fn modules() -> impl Iterator<Item = &'static str> {
    LAYERS.iter().flat_map(|l| l.iter().copied())
}

fn layer_of(module: &str) -> usize {
    LAYERS.iter().position(|l| l.contains(&module)).unwrap_or_else(|| panic!("{module} is in no layer"))
}

/// Source files of a module, each with its `#[cfg(test)]` tail removed when `without_tests`.
fn sources(module: &str, without_tests: bool) -> Vec<(String, String)> {
    let src = common::root().join("src");
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    collect(&src.join(module), &mut files, without_tests);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let text = if without_tests { strip_tests(&text) } else { text };
            (f.display().to_string(), text)
        })
        .collect()
}

/// The `.rs` files under `dir`; test-only files (`tests.rs`, `*_tests.rs`, `testing.rs`) left out when
/// `without_tests`.
fn collect(dir: &Path, out: &mut Vec<PathBuf>, without_tests: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let test_only = name == "tests.rs" || name.ends_with("_tests.rs") || name == "testing.rs";
        if p.is_dir() {
            collect(&p, out, without_tests);
        } else if name.ends_with(".rs") && !(without_tests && test_only) {
            out.push(p);
        }
    }
}

/// The text before a file's `#[cfg(test)]` module.
fn strip_tests(text: &str) -> String {
    split_inline_tests(text).0.to_string()
}

/// A file's text split at its inline test module: (its own code, the `#[cfg(test)] mod tests { ... }`).
fn split_inline_tests(text: &str) -> (&str, &str) {
    let at =
        ["#[cfg(test)]\nmod tests {", "#[cfg(test)]\npub(crate) mod tests {"].iter().filter_map(|m| text.find(m)).min();
    match at {
        Some(i) => text.split_at(i),
        None => (text, ""),
    }
}

/// The code of a file: comment lines (`//`, `///`, `//!`) and the text of string literals left out, so that
/// neither a doc link nor a message names a dependency.
fn code(text: &str) -> String {
    let lines = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut out = String::with_capacity(lines.len());
    let (mut in_string, mut escaped, mut prev) = (false, false, ' ');
    for c in lines.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                out.push(c);
            }
        } else {
            // A quote opens a string unless it is a char literal ('"').
            if c == '"' && prev != '\'' {
                in_string = true;
            }
            out.push(c);
        }
        prev = c;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segment of each item named after `prefix` (`prefix` + `a::b` names `a`, `prefix` +
/// `{a, b::c}` names `a` and `b`; `*` is named `*`). `prefix` must not follow an identifier or `::`.
fn names_after(text: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in text.match_indices(prefix) {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(j, _)| j);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.extend(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            names.extend(first_segment(rest));
        }
    }
    names
}

fn first_segment(text: &str) -> Option<String> {
    let text = text.trim_start();
    if text.starts_with('*') {
        return Some("*".into());
    }
    let name: String = text.chars().take_while(|&c| is_ident(c)).collect();
    (!name.is_empty()).then_some(name)
}

/// module -> the other top-level modules its code (tests included) names.
fn dependencies() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut deps = BTreeMap::new();
    for module in modules() {
        let mut uses = BTreeSet::new();
        for (_, text) in sources(module, false) {
            for name in names_after(&code(&text), "crate::") {
                if let Some(other) = modules().find(|m| *m == name && *m != module) {
                    uses.insert(other);
                }
            }
        }
        deps.insert(module, uses);
    }
    deps
}

#[test]
fn modules_form_no_cycle_and_lower_layers_do_not_reach_up() {
    let deps = dependencies();
    // The scan sees real edges (else the checks below would pass on nothing), tests' edges included.
    for (from, to) in [
        ("convert", "pipeline"),
        ("pipeline", "manifest"),
        ("bench", "convert"),
        ("passes", "manifest"),
        ("passes", "runtime"),
        ("tune", "host"),
    ] {
        assert!(deps[from].contains(to), "{from} -> {to} not seen: {:?}", deps[from]);
    }
    for low in ["passes", "pipeline", "manifest", "runtime", "onnx", "scheduler", "settings"] {
        for high in ["convert", "bench", "tune"] {
            assert!(!deps[low].contains(high), "{low} names crate::{high}: {:?}", deps[low]);
        }
    }
    // Each module names only modules of the layers below its own (so there is no cycle either).
    let mut wrong = Vec::new();
    for (from, uses) in &deps {
        for to in uses {
            if layer_of(to) >= layer_of(from) {
                wrong.push(format!(
                    "{from} (layer {}) names crate::{to} (layer {})",
                    layer_of(from) + 1,
                    layer_of(to) + 1
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "modules reach sideways or up:\n{}", wrong.join("\n"));
}

/// One folder of `src/`: its files and subfolders ("nodes"; `x.rs` and `x/` are one node `x`), the file
/// that is its module (`mod.rs`, or `<folder>.rs` beside it), and its path in the crate.
struct Folder {
    path: String,
    module_file: PathBuf,
    nodes: BTreeMap<String, Vec<PathBuf>>,
    dir: PathBuf,
}

fn folders(dir: &Path, path: &str, out: &mut Vec<Folder>) {
    let mut nodes: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut files = Vec::new();
            collect(&p, &mut files, false);
            nodes.entry(name.clone()).or_default().extend(files);
            folders(&p, &format!("{path}::{name}"), out);
        } else if p.extension().is_some_and(|x| x == "rs") && name != "mod" {
            nodes.entry(name).or_default().push(p);
        }
    }
    let module_file = if dir.join("mod.rs").is_file() { dir.join("mod.rs") } else { dir.with_extension("rs") };
    out.push(Folder { path: path.to_string(), module_file, nodes, dir: dir.to_path_buf() });
}

/// The names a folder's module file re-exports (`pub use child::{A, B}`), each with the child it comes from.
fn reexports(module_text: &str, nodes: &BTreeMap<String, Vec<PathBuf>>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in module_text.split(';') {
        let s = statement.trim_start();
        let Some(rest) = s.strip_prefix("pub use ").or_else(|| s.strip_prefix("pub(crate) use ")) else { continue };
        let Some(child) = first_segment(rest).filter(|c| nodes.contains_key(c)) else { continue };
        let names = rest[child.len()..].split(|c: char| !is_ident(c));
        for name in names.filter(|n| !n.is_empty() && *n != "as" && *n != "self") {
            out.insert(name.to_string(), child.clone());
        }
    }
    out
}

/// The module file's code without its `mod` and `pub use` statements: those lay out the folder, they do
/// not use its files.
fn own_code(module_text: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in module_text.lines() {
        let t = line.trim_start();
        let declares = ["pub use ", "pub(crate) use ", "mod ", "pub mod ", "pub(crate) mod ", "#[cfg(test)]"]
            .iter()
            .any(|p| t.starts_with(p));
        if declares && (!t.contains('{') || t.contains("use ")) {
            skipping = true;
        }
        if !skipping {
            out.push(line);
        }
        if skipping && (t.ends_with(';') || t.ends_with('}') && t.contains("mod ")) {
            skipping = false;
        }
    }
    out.join("\n")
}

/// node -> the nodes of the same folder it names (`mod` for the module file).
fn folder_edges(folder: &Folder) -> BTreeMap<String, BTreeSet<String>> {
    let module_text = code(&std::fs::read_to_string(&folder.module_file).unwrap());
    let exported = reexports(&module_text, &folder.nodes);
    let resolve = |name: &str| -> String {
        if folder.nodes.contains_key(name) {
            name.to_string()
        } else if let Some(child) = exported.get(name) {
            child.clone()
        } else {
            "mod".to_string()
        }
    };
    let absolute = format!("{}::", folder.path);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |from: &str, to: String| {
        if from != to {
            edges.entry(from.to_string()).or_default().insert(to);
        }
    };
    // The module file: its children by their bare names (`rules::infer_node`), names it re-exports used
    // bare, and paths from the crate root or from its inline tests.
    let own = own_code(&module_text);
    let (main, tests) = split_inline_tests(&own);
    for child in folder.nodes.keys() {
        let bare = format!("{child}::");
        if main.match_indices(&bare).any(|(i, _)| !main[..i].ends_with(|c: char| is_ident(c) || c == ':')) {
            add("mod", child.clone());
        }
    }
    for (name, child) in &exported {
        let used = main
            .match_indices(name.as_str())
            .any(|(i, _)| !main[..i].ends_with(is_ident) && !main[i + name.len()..].starts_with(is_ident));
        if used {
            add("mod", child.clone());
        }
    }
    for name in names_after(&own, &absolute).into_iter().chain(names_after(tests, "super::")) {
        if name != "*" {
            add("mod", resolve(&name));
        }
    }
    for (node, files) in &folder.nodes {
        for file in files {
            let rel = file.strip_prefix(&folder.dir).unwrap().with_extension("");
            let mut depth = rel.components().count();
            if rel.ends_with("mod") {
                depth -= 1;
            }
            let text = code(&std::fs::read_to_string(file).unwrap());
            let (main, tests) = split_inline_tests(&text);
            for (part, depth) in [(main, depth), (tests, depth + 1)] {
                let relative = "super::".repeat(depth);
                for name in names_after(part, &absolute).into_iter().chain(names_after(part, &relative)) {
                    match name.as_str() {
                        "super" => {}
                        "*" => add(node, "mod".into()),
                        name => add(node, resolve(name)),
                    }
                }
            }
        }
    }
    edges
}

/// Every circle among one folder's nodes, as `a -> b -> a`.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == n) {
            found.push(format!("{} -> {n}", path[i..].join(" -> ")));
            return;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, path, done, found);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn no_folder_has_a_circle_among_its_files() {
    let src = common::root().join("src");
    let mut all = Vec::new();
    for module in modules() {
        if src.join(module).is_dir() {
            folders(&src.join(module), &format!("crate::{module}"), &mut all);
        }
    }
    // The scan sees real edges: a pass names the folder's module file, the registry names the passes.
    let passes = all.iter().find(|f| f.path == "crate::passes").unwrap();
    let edges = folder_edges(passes);
    assert!(edges["cleanup"].contains("mod") && edges["registry"].contains("attention"), "{edges:?}");
    // A circle found by the search is reported (the search is not blind to one).
    let made_up = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["mod".to_string()])),
        ("mod".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(circles(&made_up), ["a -> mod -> a"]);
    let mut found = Vec::new();
    for folder in &all {
        for circle in circles(&folder_edges(folder)) {
            found.push(format!("{}: {circle}", folder.path));
        }
    }
    assert!(found.is_empty(), "files that name each other in a circle:\n{}", found.join("\n"));
}

#[test]
fn pass_options_are_read_by_serde_only() {
    for (file, text) in sources("passes", true) {
        if file.ends_with("registry.rs") || file.ends_with("options.rs") {
            continue; // the tables passed through, and the one generic serde call
        }
        for needle in ["toml::", "as_table(", "as_integer(", "as_array("] {
            assert!(!text.contains(needle), "{file} reads options by hand ({needle})");
        }
    }
    // ... and the parsing did not move into convert/: no hand-reading of TOML values there either.
    for (file, text) in sources("convert", true) {
        for needle in ["as_table(", "as_integer(", "as_array(", "as_bool(", "as_float("] {
            assert!(!text.contains(needle), "{file} reads TOML by hand ({needle})");
        }
    }
}

/// The README's pass table is the registry's, row for row.
#[test]
fn readme_lists_the_passes_of_the_registry() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let start = readme.find("<!-- passes:start -->").expect("README has the passes table") + 21;
    let end = readme.find("<!-- passes:end -->").unwrap();
    let mut want = String::from("\n| pass | what it does (options) |\n|---|---|\n");
    for pass in dfast::passes::registry::PASSES {
        want.push_str(&format!("| `{}` | {} |\n", pass.name, pass.summary.replace('|', "\\|")));
    }
    assert_eq!(&readme[start..end], want, "update the README's pass table from src/passes/registry.rs");
}

/// The README's usage lines name only flags the binary has: each `--flag` in a `dfast <command> ...` block
/// appears in that command's `--help`.
#[test]
fn readme_usage_matches_the_binary() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let mut checked = 0;
    let mut command: Option<String> = None;
    let mut in_code = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            command = None;
            continue;
        }
        if !in_code {
            continue;
        }
        let trimmed = line.trim_start();
        if let Some(rest) = line.strip_prefix("dfast ") {
            command = rest.split_whitespace().next().map(str::to_string);
        } else if !(line.starts_with(' ') && trimmed.starts_with('[') || trimmed.starts_with("--")) {
            command = None;
        }
        let Some(cmd) = &command else { continue };
        let help = common::dfast(&[cmd, "--help"]);
        assert!(help.status.success(), "README names `dfast {cmd}`, which has no --help");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).filter(|w| w.starts_with("--")) {
            assert!(help.contains(flag), "README: `dfast {cmd}` has no {flag}");
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} flags found in the README's usage lines");
}
