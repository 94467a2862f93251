//! [`OnnxModel`]: an ONNX model read from disk, with its weights left where they are.
//!
//! `model.onnx` is memory-mapped and parsed in place: `raw_data` of every tensor is a slice of the map
//! (`bytes::Bytes`), not a copy. Tensors stored in an external file (`model.onnx_data`, the layout of
//! exports over 2 GB) keep their `location`/`offset`/`length` entries; the data file is mapped the first
//! time a tensor in it is read, and never read whole. Saving streams each tensor from wherever it lives
//! into the new files, so a 10 GB UNet is rewritten without 10 GB of memory.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use ndarray::ArrayD;
use protobuf::{EnumOrUnknown, Message};

use super::proto::onnx::tensor_proto::DataLocation;
use super::proto::onnx::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use super::tensor::{self, dtype};
use crate::{Error, Result};

/// Above this many bytes of tensor data, `ExternalData::Auto` writes an external data file: protobuf
/// cannot hold a message over 2 GB, and the graph itself needs some room below that.
pub const EXTERNAL_DATA_THRESHOLD: u64 = 1_800_000_000;

/// Tensors smaller than this stay inside `model.onnx` even when an external data file is written
/// (the `onnx` package's default `size_threshold`, which Optimum's exports use).
pub const DEFAULT_SIZE_THRESHOLD: usize = 1024;

/// Tensors of at least this size start at an offset aligned to [`LARGE_TENSOR_ALIGNMENT`] in the data
/// file, as the `onnx` package does, so that ONNX Runtime can map them directly.
const LARGE_TENSOR: usize = 1 << 20;
const LARGE_TENSOR_ALIGNMENT: u64 = 1 << 16;
const SMALL_TENSOR_ALIGNMENT: u64 = 16;

/// Where `save` puts tensor data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// External when the source model used external data or the tensors add up to more than
    /// [`EXTERNAL_DATA_THRESHOLD`]; embedded otherwise.
    #[default]
    Auto,
    /// Always write the data file (tensors of at least `size_threshold` bytes go there).
    Always,
    /// Everything inside `model.onnx`; an error if that cannot fit in one protobuf.
    Never,
}

/// Options for [`OnnxModel::save_with`].
#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub external_data: ExternalData,
    /// File name of the data file, next to the model; default `<model file name>_data`
    /// (`model.onnx_data`, as Optimum names it).
    pub data_file_name: Option<String>,
    /// Tensors smaller than this many bytes stay in `model.onnx`.
    pub size_threshold: usize,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { external_data: ExternalData::Auto, data_file_name: None, size_threshold: DEFAULT_SIZE_THRESHOLD }
    }
}

impl SaveOptions {
    /// Options that force an external data file.
    pub fn external() -> Self {
        SaveOptions { external_data: ExternalData::Always, ..Default::default() }
    }

    /// Options that force every tensor into `model.onnx`.
    pub fn embedded() -> Self {
        SaveOptions { external_data: ExternalData::Never, ..Default::default() }
    }
}

/// What [`OnnxModel::save_with`] wrote.
#[derive(Debug, Clone)]
pub struct SaveReport {
    pub model_path: PathBuf,
    /// The external data file, when one was written.
    pub data_path: Option<PathBuf>,
    /// Tensors written to the data file and their total size in bytes (padding excluded).
    pub external_tensors: usize,
    pub external_bytes: u64,
}

/// An ONNX model: the parsed protobuf plus access to tensor data wherever it lives.
///
/// The protobuf is public through [`OnnxModel::proto`] / [`OnnxModel::proto_mut`]; passes should not
/// edit it directly but return a [`crate::onnx::Patch`].
pub struct OnnxModel {
    proto: ModelProto,
    /// The file the model was loaded from (None for a model built in memory).
    path: Option<PathBuf>,
    /// Folder that external data locations are relative to.
    base_dir: Option<PathBuf>,
    /// External data files, mapped on first use: path -> the whole map as shared bytes.
    maps: Mutex<HashMap<PathBuf, Bytes>>,
}

impl Clone for OnnxModel {
    fn clone(&self) -> Self {
        let maps = self.maps.lock().map(|m| m.clone()).unwrap_or_default();
        OnnxModel {
            proto: self.proto.clone(),
            path: self.path.clone(),
            base_dir: self.base_dir.clone(),
            maps: Mutex::new(maps),
        }
    }
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("nodes", &self.graph().node.len())
            .field("initializers", &self.graph().initializer.len())
            .finish()
    }
}

impl OnnxModel {
    /// Reads `path` (a `model.onnx`). External data stays on disk; its references are checked here (the
    /// files exist, the ranges fit) so that a broken export fails now, with the file named.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot read", e))?;
        if !meta.is_file() {
            return Err(Error::bad_file(path, "not an ONNX model: not a file"));
        }
        if meta.len() == 0 {
            return Err(Error::bad_file(path, "not an ONNX model: the file is empty"));
        }
        let bytes = map_file(path)?;
        let proto =
            ModelProto::parse_from_tokio_bytes(&bytes).map_err(|e| Error::parse_file(path, "not an ONNX model", e))?;
        // Almost any short byte string parses as *some* protobuf; a model has at least these two.
        if proto.ir_version.is_none() || proto.graph.is_none() {
            return Err(Error::bad_file(path, "not an ONNX model: no IR version or no graph"));
        }
        let base_dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
        let model = OnnxModel {
            proto,
            path: Some(path.to_path_buf()),
            base_dir: base_dir.map(Path::to_path_buf),
            maps: Mutex::new(HashMap::new()),
        };
        model.check_complete(path)?;
        model.check_external_refs()?;
        Ok(model)
    }

    /// A file cut short (a failed download, a full disk) often still parses: protobuf stops at a field
    /// boundary. What every exported model has tells: an opset import (written after the graph), graph
    /// outputs (written after the nodes), and a definition for every value a top-level node reads.
    fn check_complete(&self, path: &Path) -> Result<()> {
        let damaged = |what: String| {
            Error::bad_file(path, format!("not a complete ONNX model: {what} (a truncated or damaged file?)"))
        };
        if self.proto.opset_import.is_empty() {
            return Err(damaged("it imports no opset".into()));
        }
        let graph = self.graph();
        if graph.output.is_empty() {
            return Err(damaged("its graph has no outputs".into()));
        }
        let mut defined: std::collections::HashSet<&str> = graph.input.iter().map(|i| i.name()).collect();
        defined.extend(graph.initializer.iter().map(|t| t.name()));
        defined.extend(graph.sparse_initializer.iter().filter_map(|t| t.values.as_ref()).map(|t| t.name()));
        defined.extend(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
        for node in &graph.node {
            if let Some(missing) = node.input.iter().find(|i| !i.is_empty() && !defined.contains(i.as_str())) {
                return Err(damaged(format!("node `{}` reads `{missing}`, which nothing defines", node.name())));
            }
        }
        if let Some(missing) = graph.output.iter().find(|o| !defined.contains(o.name())) {
            return Err(damaged(format!("graph output `{}` is not produced", missing.name())));
        }
        Ok(())
    }

    /// Wraps a protobuf built in memory. `base_dir` is where its external data locations (if any) are
    /// resolved; None when it has none.
    pub fn from_proto(proto: ModelProto, base_dir: Option<&Path>) -> Self {
        OnnxModel { proto, path: None, base_dir: base_dir.map(Path::to_path_buf), maps: Mutex::new(HashMap::new()) }
    }

    /// The protobuf.
    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    /// The protobuf, for edits outside the pass machinery (metadata, opset imports, tests).
    pub fn proto_mut(&mut self) -> &mut ModelProto {
        &mut self.proto
    }

    /// The main graph.
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.get_or_default()
    }

    /// The main graph, mutably (used by `apply_patch`).
    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto.graph.mut_or_insert_default()
    }

    /// The file this model was loaded from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The opset version imported for `domain` (`""` and `"ai.onnx"` are the default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| if d == "ai.onnx" { String::new() } else { d.to_string() };
        let want = norm(domain);
        self.proto.opset_import.iter().find(|o| norm(o.domain()) == want).map(|o| o.version())
    }

    /// How many nodes of each op the main graph has: `Conv`, `com.microsoft::GroupNorm`, ...
    pub fn op_histogram(&self) -> std::collections::BTreeMap<String, usize> {
        let mut ops = std::collections::BTreeMap::new();
        for node in &self.graph().node {
            let key = match node.domain() {
                "" | "ai.onnx" => node.op_type().to_string(),
                d => format!("{d}::{}", node.op_type()),
            };
            *ops.entry(key).or_default() += 1;
        }
        ops
    }

    /// Number of nodes in the main graph.
    pub fn node_count(&self) -> usize {
        self.graph().node.len()
    }

    /// The main graph's initializer called `name` (linear search; use `GraphIndex` in loops).
    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.graph().initializer.iter().find(|t| t.name() == name)
    }

    /// Little-endian bytes of a tensor, wherever its data lives: `raw_data` (shared, not copied), a typed
    /// field (encoded), or an external file (a slice of the file's memory map).
    pub fn tensor_bytes(&self, t: &TensorProto) -> Result<Bytes> {
        let bytes = if tensor::is_external(t) {
            let ext = ExternalRef::parse(t)?;
            let file = self.resolve_location(t, &ext.location)?;
            let map = self.mapped(&file)?;
            let end = match ext.length {
                Some(len) => ext.offset.checked_add(len),
                None => Some(map.len() as u64),
            };
            match end {
                Some(end) if ext.offset <= end && end <= map.len() as u64 => {
                    map.slice(ext.offset as usize..end as usize)
                }
                _ => {
                    return Err(Error::bad_file(
                        &file,
                        format!("tensor `{}` lies beyond the end of this file ({} bytes)", t.name(), map.len()),
                    ));
                }
            }
        } else {
            tensor::inline_bytes(t)?
        };
        if let Some(expected) = tensor::payload_len(t)?
            && bytes.len() != expected
        {
            return Err(Error::bad_input(format!(
                "tensor `{}` should hold {expected} bytes ({} of shape {:?}) but holds {}",
                t.name(),
                tensor::dtype_name(t.data_type()),
                t.dims,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Bytes of the initializer `name`; an error if there is none.
    pub fn initializer_bytes(&self, name: &str) -> Result<Bytes> {
        self.tensor_bytes(self.initializer_or_err(name)?)
    }

    /// A float tensor (float32, float16, bfloat16, float64) as f32.
    pub fn tensor_f32(&self, t: &TensorProto) -> Result<ArrayD<f32>> {
        let values = tensor::bytes_to_f32(t.name(), t.data_type(), &self.tensor_bytes(t)?)?;
        tensor::shaped(t, values)
    }

    /// An integer or bool tensor (int64, int32, int16, int8, uint*, bool) as i64.
    pub fn tensor_i64(&self, t: &TensorProto) -> Result<ArrayD<i64>> {
        let values = tensor::bytes_to_i64(t.name(), t.data_type(), &self.tensor_bytes(t)?)?;
        tensor::shaped(t, values)
    }

    /// The initializer `name` as f32 (see [`OnnxModel::tensor_f32`]).
    pub fn initializer_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        self.tensor_f32(self.initializer_or_err(name)?)
    }

    /// The initializer `name` as i64 (see [`OnnxModel::tensor_i64`]).
    pub fn initializer_i64(&self, name: &str) -> Result<ArrayD<i64>> {
        self.tensor_i64(self.initializer_or_err(name)?)
    }

    fn initializer_or_err(&self, name: &str) -> Result<&TensorProto> {
        self.initializer(name).ok_or_else(|| Error::bad_input(format!("the model has no initializer `{name}`")))
    }

    /// True when any tensor of the model keeps its data in an external file.
    pub fn uses_external_data(&self) -> bool {
        let mut any = false;
        for_each_tensor(&self.proto, &mut |t, _| any |= tensor::is_external(t));
        any
    }

    /// Total bytes of tensor data (initializers and tensors in attributes), wherever they live.
    pub fn total_tensor_bytes(&self) -> Result<u64> {
        let mut total = 0u64;
        let mut err = None;
        for_each_tensor(&self.proto, &mut |t, _| match tensor::payload_len(t) {
            Ok(Some(n)) => total += n as u64,
            // Strings: count what they hold.
            Ok(None) => total += t.string_data.iter().map(|s| s.len() as u64).sum::<u64>(),
            Err(e) => err = Some(e),
        });
        match err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Saves with default options: see [`OnnxModel::save_with`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<SaveReport> {
        self.save_with(path, &SaveOptions::default())
    }

    /// Writes the model to `path` and, when external data is chosen (see [`ExternalData`]), every
    /// initializer of at least `size_threshold` bytes into one data file next to it (Optimum's layout).
    ///
    /// Tensor data is streamed from its current place (memory map or memory) into the new files; the
    /// protobuf written never holds the external tensors. Saving over the file the model was loaded from,
    /// or over one of its external data files, is refused: those are mapped and are the user's source.
    /// Both files are written under temporary names and renamed at the end, so a failed save leaves no
    /// half-written `model.onnx`.
    pub fn save_with(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<SaveReport> {
        let path = path.as_ref();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::bad_file(path, "cannot save here: the path has no usable file name"))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::bad_file(&dir, "cannot save the model here: no such folder"));
        }
        let external = match options.external_data {
            ExternalData::Always => true,
            ExternalData::Never => false,
            ExternalData::Auto => self.uses_external_data() || self.total_tensor_bytes()? > EXTERNAL_DATA_THRESHOLD,
        };
        let data_name = options.data_file_name.clone().unwrap_or_else(|| format!("{file_name}_data"));
        if data_name.is_empty()
            || data_name == "."
            || data_name == ".."
            || data_name.contains(['/', '\\'])
            || data_name == file_name
        {
            return Err(Error::bad_input(format!(
                "`{data_name}` cannot name the external data file: give a plain file name other than the model's"
            )));
        }
        let data_path = dir.join(&data_name);
        self.refuse_source(path)?;
        if external {
            self.refuse_source(&data_path)?;
        }

        let tmp_model = dir.join(format!(".{file_name}.dfast-tmp"));
        let tmp_data = dir.join(format!(".{data_name}.dfast-tmp"));
        let result = self.write_files(&tmp_model, external.then_some((&tmp_data, data_name.as_str())), options);
        let finish = result.and_then(|(ext_tensors, ext_bytes)| {
            if external {
                std::fs::rename(&tmp_data, &data_path).map_err(|e| Error::io(&data_path, "cannot write", e))?;
            }
            std::fs::rename(&tmp_model, path).map_err(|e| Error::io(path, "cannot write", e))?;
            Ok((ext_tensors, ext_bytes))
        });
        match finish {
            Ok((external_tensors, external_bytes)) => Ok(SaveReport {
                model_path: path.to_path_buf(),
                data_path: external.then_some(data_path),
                external_tensors,
                external_bytes,
            }),
            Err(e) => {
                // Best effort: the temporaries are ours, whatever failed.
                let _ = std::fs::remove_file(&tmp_model);
                let _ = std::fs::remove_file(&tmp_data);
                Err(e)
            }
        }
    }

    /// Writes the model protobuf to `model_path` and, if asked, the data file; returns the count and size
    /// of the external tensors.
    fn write_files(
        &self,
        model_path: &Path,
        data: Option<(&PathBuf, &str)>,
        options: &SaveOptions,
    ) -> Result<(usize, u64)> {
        // Cloning shares every `raw_data` (refcounted bytes); only typed fields are copied.
        let mut proto = self.proto.clone();
        let mut writer = match data {
            Some((tmp, location)) => Some(DataWriter::create(tmp, location)?),
            None => None,
        };
        let mut failure: Option<Error> = None;
        {
            let graph = proto.graph.mut_or_insert_default();
            for t in graph.initializer.iter_mut() {
                if let Err(e) = self.place_tensor(t, writer.as_mut(), options.size_threshold) {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        // Tensors outside the main graph's initializers (Constant attributes, subgraphs, functions) stay
        // in the protobuf; the few that were external in the source are brought inline.
        for_each_tensor_mut(&mut proto, &mut |t, is_main_initializer| {
            if failure.is_none()
                && !is_main_initializer
                && tensor::is_external(t)
                && let Err(e) = self.place_tensor(t, None, usize::MAX)
            {
                failure = Some(e);
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let (count, bytes) = match writer {
            Some(w) => w.finish()?,
            None => (0, 0),
        };
        let size = proto.compute_size();
        if size > i32::MAX as u64 {
            return Err(Error::bad_input(format!(
                "the model is {:.2} GB, over protobuf's 2 GB limit for one file: save it with external data",
                size as f64 / 1e9
            )));
        }
        let file = File::create(model_path).map_err(|e| Error::io(model_path, "cannot write", e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        proto.write_to_writer(&mut out).map_err(|e| Error::io(model_path, "cannot write the model", e))?;
        out.flush().map_err(|e| Error::io(model_path, "cannot write", e))?;
        Ok((count, bytes))
    }

    /// Puts one tensor where the new files want it: into the data file (large enough and a writer
    /// given), inline (was external, no writer), or leaves it as it is.
    fn place_tensor(&self, t: &mut TensorProto, writer: Option<&mut DataWriter>, threshold: usize) -> Result<()> {
        if t.data_type() == dtype::STRING {
            // Strings have no fixed layout; ONNX keeps them in the protobuf.
            return Ok(());
        }
        let was_external = tensor::is_external(t);
        if writer.is_none() && !was_external {
            return Ok(());
        }
        let bytes = self.tensor_bytes(t)?;
        match writer {
            Some(w) if bytes.len() >= threshold => {
                let offset = w.write(&bytes)?;
                clear_data(t);
                t.external_data = vec![
                    entry("location", &w.location),
                    entry("offset", &offset.to_string()),
                    entry("length", &bytes.len().to_string()),
                ];
                t.data_location = Some(EnumOrUnknown::new(DataLocation::EXTERNAL));
            }
            _ => {
                if was_external {
                    clear_data(t);
                    t.raw_data = Some(bytes);
                    t.external_data.clear();
                    t.data_location = None;
                }
            }
        }
        Ok(())
    }

    /// Refuses `target` when it is the model file or one of its external data files.
    fn refuse_source(&self, target: &Path) -> Result<()> {
        let mut sources: Vec<PathBuf> = self.path.iter().cloned().collect();
        sources.extend(self.external_files());
        for source in sources {
            if same_file(&source, target) {
                return Err(Error::bad_file(
                    target,
                    "refusing to overwrite a file of the source model: save to another folder",
                ));
            }
        }
        Ok(())
    }

    /// The external data files the model refers to (resolved, existing or not).
    fn external_files(&self) -> Vec<PathBuf> {
        let mut files = HashSet::new();
        for_each_tensor(&self.proto, &mut |t, _| {
            if tensor::is_external(t)
                && let Ok(ext) = ExternalRef::parse(t)
                && let Ok(file) = self.resolve_location(t, &ext.location)
            {
                files.insert(file);
            }
        });
        let mut files: Vec<PathBuf> = files.into_iter().collect();
        files.sort();
        files
    }

    /// Checks every external reference: a safe relative location, an existing file, a range inside it.
    fn check_external_refs(&self) -> Result<()> {
        let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
        let mut result = Ok(());
        for_each_tensor(&self.proto, &mut |t, _| {
            if result.is_err() || !tensor::is_external(t) {
                return;
            }
            result = (|| {
                let ext = ExternalRef::parse(t)?;
                let file = self.resolve_location(t, &ext.location)?;
                let size = match sizes.get(&file) {
                    Some(s) => *s,
                    None => {
                        let meta = std::fs::metadata(&file).map_err(|e| {
                            Error::bad_file(
                                &file,
                                format!("cannot read the external data of tensor `{}`: {e}", t.name()),
                            )
                        })?;
                        sizes.insert(file.clone(), meta.len());
                        meta.len()
                    }
                };
                let end = ext.offset.checked_add(ext.length.unwrap_or(0));
                if ext.offset > size || end.is_none_or(|e| e > size) {
                    return Err(Error::bad_file(
                        &file,
                        format!("tensor `{}` lies beyond the end of this file ({size} bytes)", t.name()),
                    ));
                }
                Ok(())
            })();
        });
        result
    }

    /// The file an external `location` names, refusing absolute paths and `..` (a model must not read
    /// files outside its folder).
    fn resolve_location(&self, t: &TensorProto, location: &str) -> Result<PathBuf> {
        let rel = Path::new(location);
        if location.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(self.bad_model(format!(
                "tensor `{}` has external data at `{location}`, which is not a path inside the model's folder",
                t.name()
            )));
        }
        match &self.base_dir {
            Some(dir) => Ok(dir.join(rel)),
            None => Err(self.bad_model(format!(
                "tensor `{}` has external data but the model was not loaded from a folder",
                t.name()
            ))),
        }
    }

    fn bad_model(&self, message: String) -> Error {
        match &self.path {
            Some(p) => Error::bad_file(p, message),
            None => Error::bad_input(message),
        }
    }

    /// The memory map of an external data file, mapped on first use.
    fn mapped(&self, file: &Path) -> Result<Bytes> {
        let mut maps = self.maps.lock().map_err(|_| Error::internal("external data cache poisoned"))?;
        if let Some(bytes) = maps.get(file) {
            return Ok(bytes.clone());
        }
        let bytes = map_file(file)?;
        maps.insert(file.to_path_buf(), bytes.clone());
        Ok(bytes)
    }
}

/// Maps a whole file read-only and wraps the map as shared bytes (slices keep the map alive).
fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot read", e))?;
    let len = file.metadata().map_err(|e| Error::io(path, "cannot read", e))?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only and dfast never writes to a file it has mapped (`save` refuses to).
    // Another process truncating the file while it is mapped would fault; that is the usual contract of
    // mapped weights (ONNX Runtime and safetensors map the same way).
    match unsafe { memmap2::Mmap::map(&file) } {
        Ok(map) => Ok(Bytes::from_owner(map)),
        // Some file systems cannot map; reading is the fallback (costs memory, still correct).
        Err(_) => std::fs::read(path).map(Bytes::from).map_err(|e| Error::io(path, "cannot read", e)),
    }
}

/// True when `a` and `b` name the same existing file (symlinks and hard links included).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) if x == y => return true,
        _ => {}
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    let mut e = StringStringEntryProto::new();
    e.set_key(key.to_string());
    e.set_value(value.to_string());
    e
}

/// Drops every data field (not the type, dims, name or unknown fields).
fn clear_data(t: &mut TensorProto) {
    t.raw_data = None;
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
}

/// The `external_data` entries of a tensor.
struct ExternalRef {
    location: String,
    offset: u64,
    length: Option<u64>,
}

impl ExternalRef {
    fn parse(t: &TensorProto) -> Result<Self> {
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in &t.external_data {
            let bad =
                || Error::bad_input(format!("tensor `{}` has external data {} = `{}`", t.name(), e.key(), e.value()));
            match e.key() {
                "location" => location = Some(e.value().to_string()),
                "offset" => offset = e.value().trim().parse().map_err(|_| bad())?,
                "length" => length = Some(e.value().trim().parse().map_err(|_| bad())?),
                _ => {}
            }
        }
        let location = location
            .ok_or_else(|| Error::bad_input(format!("tensor `{}` is external but names no location", t.name())))?;
        Ok(ExternalRef { location, offset, length })
    }
}

/// Appends tensors to the new data file, aligned, and counts what it wrote.
struct DataWriter {
    out: BufWriter<File>,
    path: PathBuf,
    location: String,
    pos: u64,
    count: usize,
    bytes: u64,
}

impl DataWriter {
    fn create(path: &Path, location: &str) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, "cannot write", e))?;
        Ok(DataWriter {
            out: BufWriter::with_capacity(8 << 20, file),
            path: path.to_path_buf(),
            location: location.to_string(),
            pos: 0,
            count: 0,
            bytes: 0,
        })
    }

    /// Writes `data` at the next aligned offset and returns that offset.
    fn write(&mut self, data: &[u8]) -> Result<u64> {
        let align = if data.len() >= LARGE_TENSOR { LARGE_TENSOR_ALIGNMENT } else { SMALL_TENSOR_ALIGNMENT };
        let offset = self.pos.div_ceil(align) * align;
        let pad = (offset - self.pos) as usize;
        let err = |e: std::io::Error| Error::io(&self.path, "cannot write", e);
        self.out.write_all(&[0u8; LARGE_TENSOR_ALIGNMENT as usize][..pad]).map_err(err)?;
        self.out.write_all(data).map_err(err)?;
        self.pos = offset + data.len() as u64;
        self.count += 1;
        self.bytes += data.len() as u64;
        Ok(offset)
    }

    fn finish(mut self) -> Result<(usize, u64)> {
        self.out.flush().map_err(|e| Error::io(&self.path, "cannot write", e))?;
        Ok((self.count, self.bytes))
    }
}

/// Calls `f(tensor, is_main_graph_initializer)` for every tensor of the model: initializers, sparse
/// initializers and attribute tensors of every graph, subgraph and function, and training graphs.
pub(crate) fn for_each_tensor(model: &ModelProto, f: &mut dyn FnMut(&TensorProto, bool)) {
    fn graph(g: &GraphProto, main: bool, f: &mut dyn FnMut(&TensorProto, bool)) {
        g.initializer.iter().for_each(|t| f(t, main));
        for s in &g.sparse_initializer {
            s.values.as_ref().into_iter().chain(s.indices.as_ref()).for_each(|t| f(t, false));
        }
        for n in &g.node {
            attributes(&n.attribute, f);
        }
    }
    fn attributes(attrs: &[super::proto::onnx::AttributeProto], f: &mut dyn FnMut(&TensorProto, bool)) {
        for a in attrs {
            a.t.as_ref().into_iter().chain(a.tensors.iter()).for_each(|t| f(t, false));
            for s in a.sparse_tensor.as_ref().into_iter().chain(a.sparse_tensors.iter()) {
                s.values.as_ref().into_iter().chain(s.indices.as_ref()).for_each(|t| f(t, false));
            }
            a.g.as_ref().into_iter().chain(a.graphs.iter()).for_each(|g| graph(g, false, f));
        }
    }
    if let Some(g) = model.graph.as_ref() {
        graph(g, true, f);
    }
    for func in &model.functions {
        for n in &func.node {
            attributes(&n.attribute, f);
        }
        attributes(&func.attribute_proto, f);
    }
    for ti in &model.training_info {
        ti.initialization.as_ref().into_iter().chain(ti.algorithm.as_ref()).for_each(|g| graph(g, false, f));
    }
}

/// Mutable twin of [`for_each_tensor`].
pub(crate) fn for_each_tensor_mut(model: &mut ModelProto, f: &mut dyn FnMut(&mut TensorProto, bool)) {
    fn graph(g: &mut GraphProto, main: bool, f: &mut dyn FnMut(&mut TensorProto, bool)) {
        g.initializer.iter_mut().for_each(|t| f(t, main));
        for s in &mut g.sparse_initializer {
            s.values.as_mut().into_iter().for_each(|t| f(t, false));
            s.indices.as_mut().into_iter().for_each(|t| f(t, false));
        }
        for n in &mut g.node {
            attributes(&mut n.attribute, f);
        }
    }
    fn attributes(attrs: &mut [super::proto::onnx::AttributeProto], f: &mut dyn FnMut(&mut TensorProto, bool)) {
        for a in attrs {
            a.t.as_mut().into_iter().for_each(|t| f(t, false));
            a.tensors.iter_mut().for_each(|t| f(t, false));
            for s in a.sparse_tensor.as_mut().into_iter().chain(a.sparse_tensors.iter_mut()) {
                s.values.as_mut().into_iter().for_each(|t| f(t, false));
                s.indices.as_mut().into_iter().for_each(|t| f(t, false));
            }
            a.g.as_mut().into_iter().for_each(|g| graph(g, false, f));
            a.graphs.iter_mut().for_each(|g| graph(g, false, f));
        }
    }
    if let Some(g) = model.graph.as_mut() {
        graph(g, true, f);
    }
    for func in &mut model.functions {
        for n in &mut func.node {
            attributes(&mut n.attribute, f);
        }
        attributes(&mut func.attribute_proto, f);
    }
    for ti in &mut model.training_info {
        ti.initialization.as_mut().into_iter().for_each(|g| graph(g, false, f));
        ti.algorithm.as_mut().into_iter().for_each(|g| graph(g, false, f));
    }
}
