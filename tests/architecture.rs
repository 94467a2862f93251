//! The module layering the README describes, checked on the source text: which top-level modules each one
//! names (`crate::<module>` in `use` lines or inline, `super::` excluded), no cycle among them, nothing in
//! `passes/` or `pipeline/` that reaches up into `convert` or `bench`, and pass options read by serde only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The library's top-level modules (`src/<name>.rs` or `src/<name>/`).
const MODULES: [&str; 12] = [
    "bench",
    "convert",
    "error",
    "inspect",
    "manifest",
    "onnx",
    "passes",
    "pipeline",
    "runtime",
    "scheduler",
    "settings",
    "tune",
];

/// Source files of a module, each with its `#[cfg(test)]` tail removed when `without_tests`.
fn sources(module: &str, without_tests: bool) -> Vec<(String, String)> {
    let src = common::root().join("src");
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    collect(&src.join(module), &mut files);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let text = if without_tests { strip_tests(&text) } else { text };
            (f.display().to_string(), text)
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs") && !p.ends_with("test_util.rs") {
            out.push(p);
        }
    }
}

/// The text before a file's `#[cfg(test)]` module.
fn strip_tests(text: &str) -> String {
    match text.find("#[cfg(test)]\nmod tests").or_else(|| text.find("#[cfg(test)]\npub(crate) mod tests")) {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// module -> the other top-level modules its code (tests included) names.
fn dependencies() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut deps = BTreeMap::new();
    for module in MODULES {
        let mut uses = BTreeSet::new();
        for (_, text) in sources(module, false) {
            for other in MODULES.iter().filter(|m| **m != module) {
                let named = text.contains(&format!("crate::{other}::"))
                    || text.contains(&format!("crate::{other};"))
                    || text.contains(&format!("crate::{{{other}"))
                    || text.contains(&format!("crate::{other}}}"))
                    || text.contains(&format!("crate::{{self, {other}"));
                if named {
                    uses.insert(*other);
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
    // The scan sees real edges (else the checks below would pass on nothing).
    for (from, to) in [("convert", "pipeline"), ("pipeline", "manifest"), ("bench", "convert"), ("manifest", "passes")]
    {
        assert!(deps[from].contains(to), "{from} -> {to} not seen: {:?}", deps[from]);
    }
    for low in ["passes", "pipeline", "manifest", "runtime", "onnx", "scheduler", "settings"] {
        for high in ["convert", "bench", "tune"] {
            assert!(!deps[low].contains(high), "{low} names crate::{high}: {:?}", deps[low]);
        }
    }
    // Depth-first search for a cycle.
    fn visit<'a>(
        m: &'a str,
        deps: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(!path.contains(&m), "module cycle: {} -> {m}", path.join(" -> "));
        path.push(m);
        for d in &deps[m] {
            visit(d, deps, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in MODULES {
        visit(m, &deps, &mut Vec::new(), &mut done);
    }
}

#[test]
fn pass_options_are_read_by_serde_only() {
    for (file, text) in sources("passes", true) {
        if file.ends_with("registry.rs") {
            continue; // the one generic serde call
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
