//! The execution providers: one type from `--ep` and the profiles to the passes, the session and the
//! manifest.

use super::names::named_enum;
use crate::{Error, Result};

named_enum! {
    /// The execution providers dfast can be asked for, and that a conversion targets (it decides which
    /// fused ops a pass may emit).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum ExecutionProvider {
        Cpu = "cpu",
        Cuda = "cuda",
        TensorRt = "tensorrt" | "trt",
        OpenVino = "openvino",
    }
}

impl ExecutionProvider {
    pub fn from_name(name: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            Error::bad_input(format!(
                "unknown execution provider `{name}`; expected one of: {}",
                Self::NAMES.join(", ")
            ))
        })
    }

    /// ONNX Runtime's name for it.
    pub fn ort_name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPUExecutionProvider",
            ExecutionProvider::Cuda => "CUDAExecutionProvider",
            ExecutionProvider::TensorRt => "TensorrtExecutionProvider",
            ExecutionProvider::OpenVino => "OpenVINOExecutionProvider",
        }
    }

    /// Whether the UNet's tensors live in device memory (CUDA) rather than host memory.
    pub fn device_memory(self) -> bool {
        matches!(self, ExecutionProvider::Cuda | ExecutionProvider::TensorRt)
    }

    /// Whether the EP runs ONNX Runtime's own `com.microsoft` contrib ops (MultiHeadAttention,
    /// SkipLayerNormalization, BiasGelu, ...): ONNX Runtime's CPU and CUDA EPs do; TensorRT and OpenVINO
    /// take standard ONNX ops only.
    pub fn runs_contrib_ops(self) -> bool {
        matches!(self, ExecutionProvider::Cpu | ExecutionProvider::Cuda)
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ExecutionProvider::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_clear() {
        for name in ExecutionProvider::NAMES {
            assert_eq!(ExecutionProvider::from_name(name).unwrap().name(), *name);
        }
        assert_eq!(ExecutionProvider::from_name("TRT").unwrap(), ExecutionProvider::TensorRt);
        let err = ExecutionProvider::from_name("rocm").unwrap_err().to_string();
        assert!(err.contains("rocm") && err.contains("cpu, cuda, tensorrt, openvino"), "{err}");
        let from_toml: std::result::Result<ExecutionProvider, _> = toml::Value::String("gpu".into()).try_into();
        let err = from_toml.unwrap_err().to_string();
        assert!(err.contains("unknown variant `gpu`, expected one of `cpu`, `cuda`, `tensorrt`, `openvino`"), "{err}");
    }
}
