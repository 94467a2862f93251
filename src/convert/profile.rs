//! Optimization profiles (`profiles/*.toml`): a cumulative list of passes, options per pass, and options per
//! pass and execution provider.
//!
//! ```toml
//! name = "fuse-qkv"
//! extends = "sdpa"            # a built-in profile name, or a path relative to this file
//! passes = ["fuse-qkv"]       # appended to the passes of the profile it extends
//! [conv1x1]                   # options of one pass ...
//! channels = [128]
//! [ep.cpu.attention]          # ... and their overrides for one execution provider
//! op = "MultiHeadAttention"
//! [session.cuda]              # options of the EP's sessions when the conversion runs (see runtime::ep),
//! cuda_graph = true           # written into the converted folder's manifest
//! ```

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::{Error, Result};

/// The profiles that ship with dfast, in the order of the seed's progression.
pub const BUILTIN: [(&str, &str); 7] = [
    ("baseline", include_str!("../../profiles/baseline.toml")),
    ("sdpa", include_str!("../../profiles/sdpa.toml")),
    ("fuse-qkv", include_str!("../../profiles/fuse-qkv.toml")),
    ("conv1x1", include_str!("../../profiles/conv1x1.toml")),
    ("int8-dynamic", include_str!("../../profiles/int8-dynamic.toml")),
    ("int8-static", include_str!("../../profiles/int8-static.toml")),
    ("cuda-graph", include_str!("../../profiles/cuda-graph.toml")),
];

/// The seed's progression, what `dfast bench` runs by default: the first five built-in profiles.
pub const SEED_PROGRESSION: [&str; 5] = ["baseline", "sdpa", "fuse-qkv", "conv1x1", "int8-dynamic"];

/// A resolved profile: its `extends` chain flattened.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where it came from: `builtin:<name>` or a file path.
    pub source: String,
    /// Every pass to run, in order (the base profile's first).
    pub passes: Vec<String>,
    /// Options per pass.
    options: Table,
    /// Options per execution provider, then per pass.
    ep_options: Table,
    /// Session options per execution provider.
    session: Table,
}

impl Profile {
    /// A built-in profile by name, or a profile file by path.
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_inner(spec, None, 0)
    }

    fn load_inner(spec: &str, relative_to: Option<&Path>, depth: usize) -> Result<Self> {
        if depth > 16 {
            return Err(Error::bad_input(format!(
                "profile `{spec}`: `extends` goes more than 16 levels deep (a cycle?)"
            )));
        }
        let (text, source, dir): (String, String, Option<PathBuf>) =
            if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
                (text.to_string(), format!("builtin:{spec}"), None)
            } else {
                let path = match relative_to {
                    Some(dir) if Path::new(spec).is_relative() => dir.join(spec),
                    _ => PathBuf::from(spec),
                };
                if !path.is_file() {
                    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                    return Err(Error::bad_input(format!(
                        "unknown profile `{spec}`: not a file and not one of {}",
                        names.join(", ")
                    )));
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::bad_file(&path, format!("cannot read the profile: {e}")))?;
                let dir = path.parent().map(Path::to_path_buf);
                (text, path.display().to_string(), dir)
            };
        let bad = |msg: String| Error::bad_input(format!("profile {source}: {msg}"));
        let mut table: Table =
            text.parse().map_err(|e: toml::de::Error| bad(format!("not valid TOML: {}", e.message())))?;

        let name = match table.remove("name") {
            Some(Value::String(s)) => s,
            None => spec.to_string(),
            Some(_) => return Err(bad("`name` must be a string".into())),
        };
        let description = match table.remove("description") {
            Some(Value::String(s)) => s,
            None => String::new(),
            Some(_) => return Err(bad("`description` must be a string".into())),
        };
        let own_passes: Vec<String> = match table.remove("passes") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| bad("`passes` must be a list of pass names".into()))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("`passes` must be a list of pass names".into())),
        };
        let ep_options = match table.remove("ep") {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => return Err(bad("`ep` must be a table of execution providers".into())),
        };
        let session = match table.remove("session") {
            None => Table::new(),
            Some(Value::Table(t)) if t.values().all(|v| v.as_table().is_some_and(|o| o.values().all(scalar))) => t,
            Some(_) => return Err(bad("`session` must hold one table of plain values per execution provider".into())),
        };
        let extends = match table.remove("extends") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(bad("`extends` must be a profile name or path".into())),
        };
        for (key, value) in &table {
            if !value.is_table() {
                return Err(bad(format!("`{key}` must be a table of options for the pass of that name")));
            }
        }

        let mut profile = match extends {
            Some(parent) => Self::load_inner(&parent, dir.as_deref(), depth + 1)?,
            None => Profile {
                name: String::new(),
                description: String::new(),
                source: String::new(),
                passes: Vec::new(),
                options: Table::new(),
                ep_options: Table::new(),
                session: Table::new(),
            },
        };
        profile.name = name;
        profile.description = description;
        profile.source = source;
        for pass in own_passes {
            if !profile.passes.contains(&pass) {
                profile.passes.push(pass);
            }
        }
        merge(&mut profile.options, table);
        merge(&mut profile.ep_options, ep_options);
        merge(&mut profile.session, session);
        Ok(profile)
    }

    /// Checks every pass name against the passes dfast has.
    pub fn validate(&self, known: &[&str]) -> Result<()> {
        for pass in &self.passes {
            if !known.contains(&pass.as_str()) {
                return Err(Error::bad_input(format!(
                    "profile {} names an unknown pass `{pass}`; known passes: {}",
                    self.source,
                    known.join(", ")
                )));
            }
        }
        for key in self.options.keys() {
            if !known.contains(&key.as_str()) {
                return Err(Error::bad_input(format!(
                    "profile {} has options for an unknown pass `{key}`; known passes: {}",
                    self.source,
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The options of `pass` for execution provider `ep`: the pass's table, overridden by `[ep.<ep>.<pass>]`.
    pub fn pass_options(&self, pass: &str, ep: &str) -> Table {
        let mut out = self.options.get(pass).and_then(Value::as_table).cloned().unwrap_or_default();
        if let Some(t) = self.ep_options.get(ep).and_then(|e| e.get(pass)).and_then(Value::as_table) {
            merge(&mut out, t.clone());
        }
        out
    }
}

impl Profile {
    /// The `[session.<ep>]` options, as strings.
    pub fn session_options(&self, ep: &str) -> crate::runtime::EpOptions {
        let mut map = std::collections::BTreeMap::new();
        if let Some(t) = self.session.get(ep).and_then(Value::as_table) {
            for (k, v) in t {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                map.insert(k.clone(), v);
            }
        }
        crate::runtime::EpOptions(map)
    }
}

fn scalar(v: &Value) -> bool {
    !matches!(v, Value::Table(_) | Value::Array(_))
}

/// Key-by-key merge: tables merge recursively, anything else is replaced.
fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(key, v);
            }
        }
    }
}

/// Reads `(in_features, out_features)` pairs such as `exclude = [[1280, 640], [320, 640]]`.
pub fn shape_pairs(value: &Value, what: &str) -> Result<Vec<(usize, usize)>> {
    let bad = |i: usize| {
        Error::bad_input(format!(
            "{what}: expected a list of [in_features, out_features] pairs of positive integers; entry {} is not",
            i + 1
        ))
    };
    let items = value.as_array().ok_or_else(|| {
        Error::bad_input(format!("{what}: expected a list of [in_features, out_features] pairs of positive integers"))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_array().map(Vec::as_slice) {
            Some([a, b]) => match (a.as_integer(), b.as_integer()) {
                (Some(a), Some(b)) if a > 0 && b > 0 => Ok((a as usize, b as usize)),
                _ => Err(bad(i)),
            },
            _ => Err(bad(i)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_are_cumulative() {
        let p = Profile::load("int8-dynamic").unwrap();
        assert_eq!(p.passes, ["cleanup", "attention", "fuse-qkv", "conv1x1", "int8-dynamic"]);
        assert_eq!(Profile::load("baseline").unwrap().passes, Vec::<String>::new());
        assert_eq!(Profile::load("sdpa").unwrap().passes, ["cleanup", "attention"]);
        let channels = p.pass_options("conv1x1", "cpu");
        assert_eq!(channels["channels"].as_array().unwrap().len(), 1);
        assert_eq!(p.pass_options("attention", "cpu")["op"].as_str(), Some("MultiHeadAttention"));
        assert_eq!(p.pass_options("attention", "openvino")["op"].as_str(), Some("Attention"));
        assert_eq!(p.pass_options("int8-dynamic", "openvino")["format"].as_str(), Some("qdq"));
        assert_eq!(p.pass_options("int8-dynamic", "cpu")["min_in_features"].as_integer(), Some(16));
        for name in SEED_PROGRESSION {
            assert!(BUILTIN.iter().any(|(n, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn session_options_per_ep_and_files_shared_with_fuse_qkv() {
        let graph = Profile::load("cuda-graph").unwrap();
        assert_eq!(graph.passes, Profile::load("fuse-qkv").unwrap().passes);
        assert_eq!(graph.session_options("cuda").get("cuda_graph"), Some("true"));
        assert!(graph.session_options("cpu").0.is_empty());
        let int8 = Profile::load("int8-static").unwrap();
        assert_eq!(int8.passes.last().map(String::as_str), Some("int8-static"));
        assert_eq!(int8.pass_options("int8-static", "tensorrt")["activation"].as_str(), Some("s8"));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, "[session.cuda]\ncuda_graph = { nested = 1 }\n").unwrap();
        let err = Profile::load(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("`session` must hold one table of plain values"), "{err}");
    }

    #[test]
    fn a_file_extends_a_builtin_and_overrides_options() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("mine.toml");
        std::fs::write(&path, "name = \"mine\"\nextends = \"conv1x1\"\n[conv1x1]\nchannels = [64, 128]\n").unwrap();
        let p = Profile::load(path.to_str().unwrap()).unwrap();
        assert_eq!(p.name, "mine");
        assert_eq!(p.passes.last().map(String::as_str), Some("conv1x1"));
        assert_eq!(p.pass_options("conv1x1", "cpu")["channels"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn unknown_pass_and_bad_lists_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, "passes = [\"cleanup\", \"warp-speed\"]\n").unwrap();
        let err = Profile::load(path.to_str().unwrap()).unwrap().validate(&["cleanup"]).unwrap_err().to_string();
        assert!(err.contains("unknown pass `warp-speed`"), "{err}");
        let err = Profile::load("no-such-profile").unwrap_err().to_string();
        assert!(err.contains("unknown profile `no-such-profile`"), "{err}");
        let bad: Value = toml::from_str::<Table>("x = [[1280, 640], [3]]").unwrap()["x"].clone();
        let err = shape_pairs(&bad, "exclude").unwrap_err().to_string();
        assert!(err.contains("entry 2 is not"), "{err}");
        let good: Value = toml::from_str::<Table>("x = [[1280, 640]]").unwrap()["x"].clone();
        assert_eq!(shape_pairs(&good, "exclude").unwrap(), [(1280, 640)]);
    }
}
