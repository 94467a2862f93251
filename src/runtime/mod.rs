//! ONNX Runtime: finding the library, execution providers, sessions.

pub mod library;
mod session;

pub use library::{Flavour, ORT_VERSION};
pub use session::{HostTensor, InputSpec, Model};

use crate::{Error, Result};

/// The execution providers dfast can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
}

impl ExecutionProvider {
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" | "tensorrt" | "openvino" => Err(Error::bad_input(format!(
                "execution provider `{name}` is not supported by this version of dfast yet; use `--ep cpu`"
            ))),
            _ => Err(Error::bad_input(format!("unknown execution provider `{name}`; expected one of: cpu"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
        }
    }

    pub fn flavour(self) -> Flavour {
        match self {
            ExecutionProvider::Cpu => Flavour::Cpu,
        }
    }

    /// The provider for a session; failing to register it is an error, never a silent CPU fallback.
    pub(crate) fn dispatch(self) -> Result<ort::ep::ExecutionProviderDispatch> {
        Ok(match self {
            ExecutionProvider::Cpu => ort::ep::CPU::default().build().error_on_failure(),
        })
    }
}

/// An ONNX Runtime environment plus the execution provider sessions are created for.
pub struct Runtime {
    env: ort::environment::Environment,
    ep: ExecutionProvider,
    library: std::path::PathBuf,
}

impl Runtime {
    /// Loads the ONNX Runtime library for `ep` (see `library::find` for the lookup order).
    pub fn new(ep: ExecutionProvider, ort_lib: Option<&std::path::Path>) -> Result<Self> {
        let library = library::find(ort_lib, ep.flavour())?;
        let env = library::environment(Some(&library), ep.flavour())?;
        Ok(Runtime { env, ep, library })
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

    pub fn load(&self, path: &std::path::Path) -> Result<Model> {
        Model::load(&self.env, self.ep, path)
    }
}
