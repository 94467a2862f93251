//! Finding and loading ONNX Runtime's shared library (`ort` is built with `load-dynamic`).
//!
//! Lookup, first match wins: `--ort-lib PATH`, then `ORT_DYLIB_PATH`, then `.ort/<flavour>/` of the
//! checkout the binary was built in (filled by `experiment-scripts/setup_ort.sh`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::settings::ExecutionProvider;
use crate::{Error, Result};

/// The ONNX Runtime version `experiment-scripts/setup_ort.sh` installs and dfast is built against.
pub const ORT_VERSION: &str = "1.31.1";

/// Which build of ONNX Runtime a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `onnxruntime` 1.31.1: the CPU EP.
    Cpu,
    /// `onnxruntime-gpu` 1.31.1: the CUDA and TensorRT EPs.
    Gpu,
    /// `onnxruntime-openvino` 1.24.1: ONNX Runtime 1.24 with the OpenVINO EP built in.
    OpenVino,
}

impl Flavour {
    /// The build of ONNX Runtime that has `ep`.
    pub fn of(ep: ExecutionProvider) -> Self {
        match ep {
            ExecutionProvider::Cpu => Flavour::Cpu,
            ExecutionProvider::Cuda | ExecutionProvider::TensorRt => Flavour::Gpu,
            ExecutionProvider::OpenVino => Flavour::OpenVino,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Cpu => "cpu",
            Flavour::Gpu => "gpu",
            Flavour::OpenVino => "openvino",
        }
    }

    /// The library version `setup_ort.sh` installs for this flavour.
    pub fn version(self) -> &'static str {
        match self {
            Flavour::Cpu | Flavour::Gpu => ORT_VERSION,
            Flavour::OpenVino => ORT_OPENVINO_VERSION,
        }
    }
}

/// The ONNX Runtime version of the `openvino` flavour (the last release with the OpenVINO EP built in).
pub const ORT_OPENVINO_VERSION: &str = "1.24.1";

/// `.ort/<flavour>/` of the checkout this binary was built from.
pub fn checkout_dir(flavour: Flavour) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort").join(flavour.name())
}

/// Resolves the library path: `explicit` (from `--ort-lib`), then `ORT_DYLIB_PATH`, then the checkout's
/// `.ort/<flavour>/`.
pub fn find(explicit: Option<&Path>, flavour: Flavour) -> Result<PathBuf> {
    let from_env = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).map(PathBuf::from);
    find_in(explicit, from_env.as_deref(), &checkout_dir(flavour), flavour)
}

fn find_in(explicit: Option<&Path>, from_env: Option<&Path>, dir: &Path, flavour: Flavour) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing(path, "--ort-lib");
    }
    if let Some(path) = from_env {
        return existing(path, "ORT_DYLIB_PATH");
    }
    let candidate = dir.join(format!("libonnxruntime.so.{}", flavour.version()));
    if candidate.is_file() {
        return Ok(candidate);
    }
    // Any other version someone dropped in the folder.
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut libs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
            .collect();
        libs.sort();
        if let Some(lib) = libs.pop() {
            return Ok(lib);
        }
    }
    Err(Error::runtime(format!(
        "ONNX Runtime library not found: run `experiment-scripts/setup_ort.sh {}` to put it in {}, \
         or point ORT_DYLIB_PATH or --ort-lib at a libonnxruntime.so {}",
        flavour.name(),
        dir.display(),
        flavour.version()
    )))
}

fn existing(path: &Path, source: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(Error::runtime(format!(
            "ONNX Runtime library not found at {} (from {source}): expected the path of a libonnxruntime.so",
            path.display()
        )))
    }
}

static LOADED: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
/// Held while the environment is created: two threads (tests run in parallel) must not both create one.
/// ONNX Runtime keeps one environment per process, and a second creation racing the first can leave it
/// calling a logger that the losing side has already freed.
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Loads the library once per process and returns the ONNX Runtime environment.
///
/// A process holds one ONNX Runtime library: asking for another one later is an error.
/// How much of ONNX Runtime's log dfast shows: 0 nothing, 1 warnings and errors, 2 and more everything.
static LOG_VERBOSITY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets how much of ONNX Runtime's log is shown (`-v` on the command line); before the first session.
pub fn set_log_verbosity(verbosity: u8) {
    LOG_VERBOSITY.store(verbosity, std::sync::atomic::Ordering::Relaxed);
}

/// The last error ONNX Runtime logged. Where its error value says only "Failed to load provider ...", the
/// cause is in its log (OpenVINO: "Device GPU is not available"); dfast's message takes it from here.
static LOGGED_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Takes (and clears) the last error ONNX Runtime logged.
pub(crate) fn take_logged_error() -> Option<String> {
    LOGGED_ERROR.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

fn shows(level: ort::logging::LogLevel) -> bool {
    use ort::logging::LogLevel;
    match LOG_VERBOSITY.load(std::sync::atomic::Ordering::Relaxed) {
        0 => false,
        1 => level >= LogLevel::Warning,
        _ => true,
    }
}

pub fn environment(explicit: Option<&Path>, flavour: Flavour) -> Result<ort::environment::Environment> {
    let path = find(explicit, flavour)?;
    let _loading = LOADING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((loaded, env)) = LOADED.get() {
        if loaded != &path {
            return Err(Error::runtime(format!(
                "this process already loaded ONNX Runtime from {}; it cannot also load {}",
                loaded.display(),
                path.display()
            )));
        }
        return Ok(env.clone());
    }
    let builder = ort::init_from(&path)
        .map_err(|e| Error::ort(format!("could not load ONNX Runtime from {}: {e}", path.display()), e))?;
    // ONNX Runtime's own log goes through dfast: nothing by default (its errors reach the user as dfast's
    // one-sentence errors), warnings and errors with -v, everything with -vv; plain text, no colour codes.
    let logger: ort::logging::LoggerFunction = std::sync::Arc::new(|level, _category, _id, location, message| {
        if shows(level) {
            eprintln!("onnxruntime {level:?} ({location}): {message}");
        }
        if level >= ort::logging::LogLevel::Error {
            *LOGGED_ERROR.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message.to_string());
        }
    });
    let env = builder
        .with_name("dfast")
        .with_logger(logger)
        .build()
        .map_err(|e| Error::ort(format!("could not start ONNX Runtime from {}: {e}", path.display()), e))?;
    Ok(LOADED.get_or_init(|| (path, env)).1.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order_is_flag_then_env_then_checkout() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a.so"), tmp.path().join("b.so"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let dir = tmp.path().join(".ort").join("cpu");
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join(format!("libonnxruntime.so.{ORT_VERSION}"));
        std::fs::write(&lib, b"").unwrap();
        assert_eq!(find_in(Some(&a), Some(&b), &dir, Flavour::Cpu).unwrap(), a);
        assert_eq!(find_in(None, Some(&b), &dir, Flavour::Cpu).unwrap(), b);
        assert_eq!(find_in(None, None, &dir, Flavour::Cpu).unwrap(), lib);
    }

    #[test]
    fn nothing_found_says_how_to_get_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = find_in(None, None, &tmp.path().join("none"), Flavour::Cpu).unwrap_err().to_string();
        assert!(err.contains("experiment-scripts/setup_ort.sh cpu"), "{err}");
        assert!(!err.contains('\n'));
    }
}
