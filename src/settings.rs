//! The vocabulary a conversion and a run are described in, one type each from the command line to the
//! session and the manifest: the precision here, the execution provider in [`crate::runtime`].

use serde::{Deserialize, Serialize};

use crate::onnx::dtype;
pub use crate::runtime::ExecutionProvider;
use crate::{Error, Result};

/// Weights and compute precision of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[serde(alias = "float32")]
    Fp32,
    #[serde(alias = "float16")]
    Fp16,
    #[serde(alias = "bfloat16")]
    Bf16,
}

impl Precision {
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "fp16" | "float16" => Ok(Precision::Fp16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::bad_input(format!("unknown precision `{name}`; expected fp32, fp16 or bf16"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The ONNX element type of a float tensor in this precision.
    pub fn dtype(self) -> i32 {
        match self {
            Precision::Fp32 => dtype::FLOAT,
            Precision::Fp16 => dtype::FLOAT16,
            Precision::Bf16 => dtype::BFLOAT16,
        }
    }

    /// The default per execution provider: fp32 on cpu and openvino, fp16 on cuda and tensorrt.
    pub fn default_for(ep: ExecutionProvider) -> Self {
        match ep {
            ExecutionProvider::Cpu | ExecutionProvider::OpenVino => Precision::Fp32,
            ExecutionProvider::Cuda | ExecutionProvider::TensorRt => Precision::Fp16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_set_everywhere() {
        for (text, want) in [("fp16", Precision::Fp16), ("float16", Precision::Fp16), ("BF16", Precision::Bf16)] {
            assert_eq!(text.parse::<Precision>().unwrap(), want);
        }
        let from_toml: Precision = toml::Value::String("bfloat16".into()).try_into().unwrap();
        assert_eq!(from_toml, Precision::Bf16);
        assert!("half".parse::<Precision>().is_err());
        assert_eq!(serde_json::to_string(&Precision::Fp16).unwrap(), "\"fp16\"");
    }
}
