//! The precision of a conversion's weights and compute.

use super::ExecutionProvider;
use super::names::{list, named_enum};
use crate::{Error, Result};

named_enum! {
    /// Weights and compute precision of a conversion.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Precision {
        Fp32 = "fp32" | "float32",
        Fp16 = "fp16" | "float16",
        Bf16 = "bf16" | "bfloat16",
    }
}

impl Precision {
    pub fn from_name(name: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            Error::bad_input(format!("unknown precision `{name}`; expected {}", list(Self::NAMES, "or")))
        })
    }

    /// The default per execution provider: fp32 on cpu and openvino, fp16 on cuda and tensorrt.
    pub fn default_for(ep: ExecutionProvider) -> Self {
        match ep {
            ExecutionProvider::Cpu | ExecutionProvider::OpenVino => Precision::Fp32,
            ExecutionProvider::Cuda | ExecutionProvider::TensorRt => Precision::Fp16,
        }
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
        let err = Precision::from_name("fp8").unwrap_err().to_string();
        assert_eq!(err, "unknown precision `fp8`; expected fp32, fp16 or bf16");
    }
}
