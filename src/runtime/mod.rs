//! ONNX Runtime: finding the library, execution providers, sessions.

pub mod calibration;
mod ep;
pub mod library;
mod session;

pub use ep::{SessionRole, openvino_cpu_precision, openvino_hint, openvino_precision, precision_warning, resolved};
pub use library::{Flavour, ORT_OPENVINO_VERSION, ORT_VERSION};
pub use session::{HostTensor, InputSpec, Model, fit_shape, format_dims, is_out_of_memory};

use crate::settings::{EpOptions, ExecutionProvider};
use crate::{Error, Result};

/// An ONNX Runtime environment plus the execution provider (and its options) sessions are created for.
/// Clones share the environment.
#[derive(Clone)]
pub struct Runtime {
    env: ort::environment::Environment,
    ep: ExecutionProvider,
    options: EpOptions,
    library: std::path::PathBuf,
}

impl Runtime {
    /// Loads the ONNX Runtime library for `ep` (see `library::find` for the lookup order) and checks that
    /// it has that EP; `options` (from `--ep-option`) apply to every session.
    pub fn new(ep: ExecutionProvider, ort_lib: Option<&std::path::Path>) -> Result<Self> {
        Self::with_options(ep, EpOptions::default(), ort_lib)
    }

    pub fn with_options(ep: ExecutionProvider, options: EpOptions, ort_lib: Option<&std::path::Path>) -> Result<Self> {
        // A key the EP does not take is refused before the library loads.
        options.typed(ep).map_err(|e| Error::bad_config(format!("--ep-option {e}"), e))?;
        let library = library::find(ort_lib, Flavour::of(ep))?;
        let env = library::environment(Some(&library), Flavour::of(ep))?;
        ep::check_available(ep, &library)?;
        Ok(Runtime { env, ep, options, library })
    }

    /// The ONNX Runtime library this process loaded.
    pub fn library(&self) -> &std::path::Path {
        &self.library
    }

    /// The loaded library's version, from its file name (`libonnxruntime.so.1.31.1`) or its build info.
    pub fn version(&self) -> String {
        let name = self.library.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(v) = name.strip_prefix("libonnxruntime.so.").filter(|v| v.contains('.')) {
            return v.to_string();
        }
        let info = ort::info();
        info.split(|c: char| c == ',' || c.is_whitespace())
            .find_map(|part| part.strip_prefix("git-branch=rel-"))
            .map(str::to_string)
            .unwrap_or_else(|| ORT_VERSION.to_string())
    }

    pub fn ep(&self) -> ExecutionProvider {
        self.ep
    }

    /// The options given on the command line.
    pub fn options(&self) -> &EpOptions {
        &self.options
    }

    /// Loads a model with the command line's options.
    pub fn load(&self, path: &std::path::Path) -> Result<Model> {
        self.load_with(path, &EpOptions::default(), SessionRole::Other)
    }

    /// A warning when the options (`defaults` under the command line's) ask the EP for a precision this
    /// machine's CPU cannot compute in (OpenVINO then runs f32 and says nothing itself).
    pub fn precision_warning(&self, defaults: &EpOptions) -> Option<String> {
        ep::precision_warning(self.ep, &defaults.merged(&self.options), &crate::host::CpuFeatures::host())
    }

    /// Loads a model with `defaults` (e.g. from a converted folder's manifest) under the command line's
    /// options.
    pub fn load_with(&self, path: &std::path::Path, defaults: &EpOptions, role: SessionRole) -> Result<Model> {
        let options = defaults.merged(&self.options);
        Model::load(&self.env, self.ep, &options, role, path)
    }
}
