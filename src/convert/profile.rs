//! Optimization profiles (`profiles/*.toml`): a cumulative list of passes, options per pass, options per
//! pass and execution provider, session options per execution provider, and which execution providers the
//! profile is made for.
//!
//! ```toml
//! name = "fuse-qkv"
//! extends = "sdpa"            # a built-in profile name, or a path relative to this file
//! description = "..."
//! passes = ["fuse-qkv"]       # appended to the passes of the profile it extends
//! eps = ["cuda"]              # the EPs it is made for (absent: every EP, or the base profile's)
//! bench = true                # built-in profiles: part of `dfast bench`'s default progression on the EPs
//!                             # it is made for (`true`), or on these EPs only (`bench = ["cuda"]`)
//! [conv1x1]                   # options of one pass (its typed options; `components` limits it) ...
//! channels = [128]
//! [ep.cpu.attention]          # ... and their overrides for one execution provider
//! op = "MultiHeadAttention"
//! [session.cuda]              # options of the EP's sessions when the converted folder runs, typed per EP
//! cuda_graph = true           # (settings::SessionOptions; see the README), written into the manifest
//! ```
//!
//! Every table is checked when the profile is read: an unknown key, or a value of the wrong type, is one
//! sentence naming the profile file, the table and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use crate::passes::registry;
use crate::settings::{EpOptions, ExecutionProvider};
use crate::{Error, Result};

/// The profiles that ship with dfast, in the order of the seed's progression.
pub const BUILTIN: [(&str, &str); 13] = [
    ("baseline", include_str!("../../profiles/baseline.toml")),
    ("sdpa", include_str!("../../profiles/sdpa.toml")),
    ("fuse-qkv", include_str!("../../profiles/fuse-qkv.toml")),
    ("conv1x1", include_str!("../../profiles/conv1x1.toml")),
    ("upsample-conv", include_str!("../../profiles/upsample-conv.toml")),
    ("int8-dynamic", include_str!("../../profiles/int8-dynamic.toml")),
    ("int8-static", include_str!("../../profiles/int8-static.toml")),
    ("int8-mixed", include_str!("../../profiles/int8-mixed.toml")),
    ("int8-conv", include_str!("../../profiles/int8-conv.toml")),
    ("int8-conv-upsample", include_str!("../../profiles/int8-conv-upsample.toml")),
    ("cuda-graph", include_str!("../../profiles/cuda-graph.toml")),
    ("fused", include_str!("../../profiles/fused.toml")),
    ("fused-graph", include_str!("../../profiles/fused-graph.toml")),
];

/// A profile file as written (before `extends` is resolved).
#[derive(Debug, Deserialize)]
struct ProfileFile {
    name: Option<String>,
    description: Option<String>,
    extends: Option<String>,
    #[serde(default)]
    passes: Vec<String>,
    eps: Option<Vec<ExecutionProvider>>,
    #[serde(default)]
    bench: BenchOn,
    /// Emit fusions into CUDA-only `com.microsoft` ops (see `passes::BuildContext`); inherited.
    cuda_only_fusions: Option<bool>,
    #[serde(default)]
    ep: BTreeMap<ExecutionProvider, BTreeMap<String, Table>>,
    #[serde(default)]
    session: BTreeMap<ExecutionProvider, Table>,
    /// `[<pass>]` tables; anything else is refused after parsing.
    #[serde(flatten)]
    pass_tables: BTreeMap<String, Value>,
}

/// Where a built-in profile is part of `dfast bench`'s default progression.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BenchOn {
    /// `true`: on every EP it is made for; `false`: nowhere.
    All(bool),
    /// On these EPs (among those it is made for).
    Eps(Vec<ExecutionProvider>),
}

impl Default for BenchOn {
    fn default() -> Self {
        BenchOn::All(false)
    }
}

/// The keys a profile has besides its pass tables (for the message about an unknown one).
const KEYS: &str =
    "name, description, extends, passes, eps, bench, cuda_only_fusions, [ep.<ep>.<pass>], [session.<ep>]";

/// A resolved profile: its `extends` chain flattened, every table checked.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where it came from: `builtin:<name>` or a file path.
    pub source: String,
    /// Every pass to run, in order (the base profile's first).
    pub passes: Vec<String>,
    /// The execution providers it is made for; `None`: every one.
    pub eps: Option<Vec<ExecutionProvider>>,
    /// Where it is part of `dfast bench`'s default progression (built-in profiles).
    pub bench: BenchOn,
    /// Fusions into CUDA-only ops are emitted (on cuda) only when set: off until verified on a GPU.
    pub cuda_only_fusions: bool,
    /// Options per pass (`components` taken out).
    options: BTreeMap<String, Table>,
    /// `components = [...]` per pass.
    components: BTreeMap<String, Vec<String>>,
    /// Options per execution provider, then per pass.
    ep_options: BTreeMap<ExecutionProvider, BTreeMap<String, Table>>,
    /// Session options per execution provider.
    session: BTreeMap<ExecutionProvider, BTreeMap<String, String>>,
}

impl Profile {
    /// A built-in profile by name, or a profile file by path.
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_inner(spec, None, 0)
    }

    /// The built-in profiles in `dfast bench`'s default progression that are made for `ep`, in order.
    pub fn bench_defaults(ep: ExecutionProvider) -> Result<Vec<Profile>> {
        let mut out = Vec::new();
        for (name, _) in BUILTIN {
            let profile = Profile::load(name)?;
            let on = match &profile.bench {
                BenchOn::All(on) => *on,
                BenchOn::Eps(eps) => eps.contains(&ep),
            };
            if on && profile.made_for(ep) {
                out.push(profile);
            }
        }
        Ok(out)
    }

    /// True when the profile is made for `ep` (or for every EP).
    pub fn made_for(&self, ep: ExecutionProvider) -> bool {
        self.eps.as_ref().is_none_or(|eps| eps.contains(&ep))
    }

    /// The EPs it is made for, as text (`every EP` when not limited).
    pub fn eps_label(&self) -> String {
        match &self.eps {
            None => "every EP".into(),
            Some(eps) => eps.iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
        }
    }

    fn load_inner(spec: &str, relative_to: Option<&Path>, depth: usize) -> Result<Self> {
        if depth > 16 {
            return Err(Error::bad_input(format!(
                "profile `{spec}`: `extends` goes more than 16 levels deep (a cycle?)"
            )));
        }
        let (text, source, dir): (String, String, Option<PathBuf>) = if let Some((_, text)) =
            BUILTIN.iter().find(|(n, _)| *n == spec)
        {
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
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "cannot read the profile", e))?;
            let dir = path.parent().map(Path::to_path_buf);
            (text, path.display().to_string(), dir)
        };
        let file = parse_file(&text, &source)?;
        let bad = |msg: String| Error::bad_input(format!("profile {source}: {msg}"));

        let mut options = BTreeMap::new();
        let mut components = BTreeMap::new();
        for (key, value) in file.pass_tables {
            let Value::Table(mut table) = value else {
                return Err(bad(format!("`{key}` is not a setting of a profile ({KEYS}) nor a table of pass options")));
            };
            let pass = registry::lookup(&key).ok_or_else(|| {
                bad(format!("has options for an unknown pass `[{key}]`; known passes: {}", registry::names()))
            })?;
            if let Some(scope) = table.remove("components") {
                let list: Vec<String> = scope.try_into().map_err(|e: toml::de::Error| {
                    let message = format!("profile {source}: [{key}] key `components`: {}", e.message().trim());
                    Error::bad_config(message, e)
                })?;
                components.insert(key.clone(), list);
            }
            pass.check(&table).map_err(|e| Error::bad_config(format!("profile {source}: [{key}] {e}"), e))?;
            options.insert(key, table);
        }
        for (ep, tables) in &file.ep {
            for (key, table) in tables {
                let pass = registry::lookup(key).ok_or_else(|| {
                    bad(format!(
                        "has options for an unknown pass `[ep.{ep}.{key}]`; known passes: {}",
                        registry::names()
                    ))
                })?;
                pass.check(table)
                    .map_err(|e| Error::bad_config(format!("profile {source}: [ep.{ep}.{key}] {e}"), e))?;
            }
        }
        let mut session = BTreeMap::new();
        for (ep, table) in file.session {
            let mut map = BTreeMap::new();
            for (key, value) in table {
                // `ort.<key> = ...` (ONNX Runtime's own provider options) is a table in TOML.
                let entries = match value {
                    Value::Table(ort) if key == "ort" => {
                        ort.into_iter().map(|(k, v)| (format!("ort.{k}"), v)).collect()
                    }
                    value => vec![(key, value)],
                };
                for (key, value) in entries {
                    let text = match value {
                        Value::String(s) => s,
                        Value::Table(_) | Value::Array(_) => {
                            return Err(bad(format!(
                                "[session.{ep}] key `{key}`: expected a plain value (text, number or true/false)"
                            )));
                        }
                        other => other.to_string(),
                    };
                    map.insert(key, text);
                }
            }
            // Typed as the EP takes them: an unknown key or a wrong value is refused here, not at generate.
            let options = EpOptions(map);
            options.typed(ep).map_err(|e| Error::bad_config(format!("profile {source}: [session.{ep}] {e}"), e))?;
            session.insert(ep, options.0);
        }
        for pass in &file.passes {
            if registry::lookup(pass).is_none() {
                return Err(bad(format!("names an unknown pass `{pass}`; known passes: {}", registry::names())));
            }
        }

        let mut profile = match &file.extends {
            Some(parent) => Self::load_inner(parent, dir.as_deref(), depth + 1)?,
            None => Profile {
                name: String::new(),
                description: String::new(),
                source: String::new(),
                passes: Vec::new(),
                eps: None,
                bench: BenchOn::default(),
                cuda_only_fusions: false,
                options: BTreeMap::new(),
                components: BTreeMap::new(),
                ep_options: BTreeMap::new(),
                session: BTreeMap::new(),
            },
        };
        profile.name = file.name.unwrap_or_else(|| spec.to_string());
        profile.description = file.description.unwrap_or_default();
        profile.source = source;
        profile.bench = file.bench;
        if file.eps.is_some() {
            profile.eps = file.eps;
        }
        if let Some(on) = file.cuda_only_fusions {
            profile.cuda_only_fusions = on;
        }
        for pass in file.passes {
            if !profile.passes.contains(&pass) {
                profile.passes.push(pass);
            }
        }
        for (pass, table) in options {
            merge(profile.options.entry(pass).or_default(), table);
        }
        profile.components.extend(components);
        for (ep, tables) in file.ep {
            let into = profile.ep_options.entry(ep).or_default();
            for (pass, table) in tables {
                merge(into.entry(pass).or_default(), table);
            }
        }
        for (ep, map) in session {
            profile.session.entry(ep).or_default().extend(map);
        }
        Ok(profile)
    }

    /// The options of `pass` for execution provider `ep`: the pass's table, overridden by `[ep.<ep>.<pass>]`.
    pub fn pass_options(&self, pass: &str, ep: ExecutionProvider) -> Table {
        let mut out = self.options.get(pass).cloned().unwrap_or_default();
        if let Some(t) = self.ep_options.get(&ep).and_then(|e| e.get(pass)) {
            merge(&mut out, t.clone());
        }
        out
    }

    /// The components `pass` is limited to (`components = [...]`); `None`: every component.
    pub fn components(&self, pass: &str) -> Option<&[String]> {
        self.components.get(pass).map(Vec::as_slice)
    }

    /// The `[session.<ep>]` options.
    pub fn session_options(&self, ep: ExecutionProvider) -> EpOptions {
        EpOptions(self.session.get(&ep).cloned().unwrap_or_default())
    }
}

/// Parses a profile's TOML, naming the key that does not fit.
fn parse_file(text: &str, source: &str) -> Result<ProfileFile> {
    from_toml(text, &format!("profile {source}"))
}

/// Deserializes a TOML document (a profile, a model card) into `T`; an error is one sentence that starts
/// with `what` and names the key that does not fit, with the TOML error as its source.
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        Error::bad_config(format!("{what}: not valid TOML: {}", e.message().trim()), e)
    })?;
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        // A map key that is no EP (`[ep.tpu]`) is reported as `ep.?`: put the key back in.
        let variant = inner.message().strip_prefix("unknown variant `").and_then(|r| r.split('`').next());
        let key = match variant {
            Some(v) if key.ends_with('?') => format!("{}{v}", &key[..key.len() - 1]),
            _ => key,
        };
        Error::bad_config(format!("{what}: key `{key}`: {}", inner.message()), inner)
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutionProvider::{Cpu, Cuda, OpenVino, TensorRt};

    #[test]
    fn builtin_profiles_are_cumulative() {
        let p = Profile::load("int8-dynamic").unwrap();
        assert_eq!(p.passes, ["cleanup", "attention", "fuse-qkv", "conv1x1", "int8-dynamic"]);
        assert_eq!(Profile::load("baseline").unwrap().passes, Vec::<String>::new());
        assert_eq!(Profile::load("sdpa").unwrap().passes, ["cleanup", "attention"]);
        let channels = p.pass_options("conv1x1", Cpu);
        assert_eq!(channels["channels"].as_array().unwrap().len(), 1);
        assert_eq!(p.pass_options("attention", Cpu)["op"].as_str(), Some("MultiHeadAttention"));
        assert_eq!(p.pass_options("attention", OpenVino)["op"].as_str(), Some("Attention"));
        assert_eq!(p.pass_options("int8-dynamic", OpenVino)["format"].as_str(), Some("qdq"));
        assert_eq!(p.pass_options("int8-dynamic", Cpu)["min_in_features"].as_integer(), Some(16));
        assert_eq!(
            p.components("int8-dynamic"),
            Some(&["unet".to_string(), "transformer".to_string(), "vae_decoder".to_string()][..])
        );
    }

    #[test]
    fn profiles_know_their_eps_and_bench_defaults_come_from_them() {
        let graph = Profile::load("cuda-graph").unwrap();
        assert!(graph.made_for(Cuda) && !graph.made_for(Cpu));
        assert!(Profile::load("int8-static").unwrap().made_for(OpenVino));
        assert!(!Profile::load("int8-static").unwrap().made_for(Cpu));
        assert!(Profile::load("fuse-qkv").unwrap().made_for(TensorRt));
        let names = |ep| Profile::bench_defaults(ep).unwrap().into_iter().map(|p| p.name).collect::<Vec<_>>();
        let seed = ["baseline", "sdpa", "fuse-qkv", "conv1x1", "int8-dynamic"];
        assert_eq!(names(Cpu), seed);
        assert_eq!(names(OpenVino), [&seed[..], &["int8-mixed"]].concat(), "int8-mixed: openvino only");
        assert_eq!(names(Cuda), [&seed[..], &["fused", "fused-graph"]].concat());
        assert_eq!(names(TensorRt), seed, "fused is in the default progression on cuda only");
        // A profile file's own metadata decides, not a list in the code.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("mine.toml");
        std::fs::write(&path, "extends = \"cuda-graph\"\n").unwrap();
        assert!(!Profile::load(path.to_str().unwrap()).unwrap().made_for(Cpu), "eps are inherited");
        std::fs::write(&path, "extends = \"cuda-graph\"\neps = [\"cpu\", \"cuda\"]\n").unwrap();
        assert!(Profile::load(path.to_str().unwrap()).unwrap().made_for(Cpu));
    }

    #[test]
    fn session_options_per_ep_and_files_shared_with_fuse_qkv() {
        let graph = Profile::load("cuda-graph").unwrap();
        assert_eq!(graph.passes, Profile::load("fuse-qkv").unwrap().passes);
        assert_eq!(graph.session_options(Cuda).get("cuda_graph"), Some("true"));
        assert!(graph.session_options(Cpu).0.is_empty());
        let int8 = Profile::load("int8-static").unwrap();
        assert_eq!(int8.passes.last().map(String::as_str), Some("int8-static"));
        assert_eq!(int8.pass_options("int8-static", TensorRt)["activation"].as_str(), Some("s8"));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, "[session.cuda]\ncuda_graph = { nested = 1 }\n").unwrap();
        let err = Profile::load(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("[session.cuda] key `cuda_graph`: expected a plain value"), "{err}");
        // Each EP's keys are its own: a typo, a key of another EP, a value of the wrong type.
        for (text, expected) in [
            (
                "[session.cuda]\ncuda_grpah = true\n",
                "[session.cuda] key `cuda_grpah`: EP option(s) `cuda_grpah` are not known",
            ),
            ("[session.cpu]\nprefer_nhwc = true\n", "[session.cpu] key `prefer_nhwc`: EP option(s)"),
            (
                "[session.openvino]\nprecision = \"int4\"\n",
                "[session.openvino] key `precision`: EP option `precision` is `int4`",
            ),
            ("[session.cuda]\nthreads = \"two\"\n", "[session.cuda] key `threads`: invalid value"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Profile::load(path.to_str().unwrap()).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("profile {}: ", path.display())) && err.contains(expected),
                "{text}: {err}"
            );
        }
        // ONNX Runtime's own keys go through as `ort.<key>`.
        std::fs::write(&path, "[session.cuda]\nort.gpu_mem_limit = 1024\n").unwrap();
        let p = Profile::load(path.to_str().unwrap()).unwrap();
        assert_eq!(p.session_options(Cuda).get("ort.gpu_mem_limit"), Some("1024"));
    }

    #[test]
    fn a_file_extends_a_builtin_and_overrides_options() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("mine.toml");
        std::fs::write(&path, "name = \"mine\"\nextends = \"conv1x1\"\n[conv1x1]\nchannels = [64, 128]\n").unwrap();
        let p = Profile::load(path.to_str().unwrap()).unwrap();
        assert_eq!(p.name, "mine");
        assert_eq!(p.passes.last().map(String::as_str), Some("conv1x1"));
        assert_eq!(p.pass_options("conv1x1", Cpu)["channels"].as_array().unwrap().len(), 2);
    }

    /// Each bad profile: one sentence naming the file, the table and the key.
    #[test]
    fn unknown_keys_and_wrong_types_name_file_table_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.toml");
        let file = path.display().to_string();
        for (text, expected) in [
            ("passes = [\"cleanup\", \"warp-speed\"]\n", "names an unknown pass `warp-speed`"),
            ("[conv1x1]\nchanels = [128]\n", "[conv1x1] key `chanels`: unknown field `chanels`"),
            ("[conv1x1]\nchannels = \"128\"\n", "[conv1x1] key `channels`: invalid type: string"),
            ("[ep.cpu.attention]\nop = 3\n", "[ep.cpu.attention] key `op`: invalid type"),
            ("[ep.cpu.attention]\nopp = \"Attention\"\n", "[ep.cpu.attention] key `opp`: unknown field"),
            ("[ep.tpu.attention]\nop = \"Attention\"\n", "key `ep.tpu`: unknown variant `tpu`"),
            ("[warp]\nx = 1\n", "unknown pass `[warp]`"),
            ("descripton = \"typo\"\n", "`descripton` is not a setting of a profile"),
            ("eps = [\"gpu\"]\n", "key `eps[0]`: unknown variant `gpu`"),
            ("bench = \"yes\"\n", "key `bench`: data did not match any variant"),
            ("[int8-dynamic]\ncomponents = \"unet\"\n", "[int8-dynamic] key `components`"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Profile::load(&file).unwrap_err().to_string();
            assert!(err.starts_with(&format!("profile {file}: ")), "{text}: {err}");
            assert!(err.contains(expected), "{text}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let err = Profile::load("no-such-profile").unwrap_err().to_string();
        assert!(err.contains("unknown profile `no-such-profile`"), "{err}");
    }

    #[test]
    fn toml_errors_keep_their_source() {
        use std::error::Error as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, "passes = [\n").unwrap();
        let err = Profile::load(path.to_str().unwrap()).unwrap_err();
        assert!(err.source().is_some_and(|s| s.downcast_ref::<toml::de::Error>().is_some()), "{err:?}");
        std::fs::write(&path, "[conv1x1]\nchannels = 1\n").unwrap();
        assert!(Profile::load(path.to_str().unwrap()).unwrap_err().source().is_some());
    }

    /// The two profile files for the GPU comparison: both turn the CUDA-only fusions on; the prefer_nhwc one
    /// turns nhwc-conv off and asks the CUDA EP for its own channels-last convolutions.
    #[test]
    fn the_comparison_profiles() {
        use crate::passes::nhwc_conv::tests::net;
        use crate::passes::{BuildContext, PassContext, PassManager};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let ours = Profile::load(dir.join("fused-cuda-only.toml").to_str().unwrap()).unwrap();
        let theirs = Profile::load(dir.join("fused-prefer-nhwc.toml").to_str().unwrap()).unwrap();
        for p in [&ours, &theirs] {
            assert!(p.cuda_only_fusions && p.passes.contains(&"nhwc-conv".to_string()), "{}", p.name);
            assert!(p.made_for(Cuda) && !p.made_for(Cpu));
        }
        let mut ctx = BuildContext::new(Cuda, crate::settings::Precision::Fp16);
        ctx.cuda_only_fusions = true;
        let model = net(8, &[], vec![]);
        for (p, fires, nhwc) in [(&ours, true, false), (&theirs, false, true)] {
            let options = p.pass_options("nhwc-conv", Cuda);
            let pass = registry::lookup("nhwc-conv").unwrap().build(&options, &ctx).unwrap();
            let mut manager = PassManager::new();
            manager.push("nhwc-conv", pass);
            let r = manager.run(&mut model.clone(), &PassContext::new(Cuda)).unwrap().remove(0);
            assert_eq!(r.rewrites > 0, fires, "{}", p.name);
            assert_eq!(p.session_options(Cuda).flag("prefer_nhwc", false).unwrap(), nhwc, "{}", p.name);
        }
    }
}
