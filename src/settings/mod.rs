//! The vocabulary a conversion and a run are described in, one type each from the command line to the
//! session and the manifest: the precision, the execution provider and its session options. The bottom layer above `error`:
//! nothing here knows ONNX, ONNX Runtime or the machine.

mod ep;
mod names;
mod precision;
mod session;

pub use ep::ExecutionProvider;
pub(crate) use names::{list, named_enum};
pub use precision::Precision;
pub use session::{
    ConvAlgo, CpuOptions, CudaOptions, EpOptions, OpenVinoOptions, PerformanceHint, PrecisionHint, SessionOptions,
    TensorRtOptions, openvino_precision_names,
};

/// An option that does not fit (a pass's, an execution provider's): the key (dotted path inside the table;
/// empty for the table itself) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() { f.write_str(&self.message) } else { write!(f, "key `{}`: {}", self.key, self.message) }
    }
}

impl std::error::Error for OptionError {}
