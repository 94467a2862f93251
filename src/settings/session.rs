//! Session options of an execution provider, typed per EP.
//!
//! They are written as `key = value` text ([`EpOptions`]): a profile's `[session.<ep>]` table, a converted
//! folder's manifest, `--ep-option key=value` (which wins, key by key). Each EP's keys are a serde struct
//! that refuses unknown keys ([`SessionOptions::parse`]), so a typo is refused where the options are read
//! (`dfast convert` reads the profile's), not when a session is created. ONNX Runtime's own provider
//! options go through unchecked as `ort.<key>` on the EPs that take a string map of them (cuda, tensorrt,
//! openvino); ONNX Runtime refuses the ones it does not know. How each key reaches ONNX Runtime is in
//! `runtime::ep`; the README's table lists them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, IntoDeserializer, Visitor};

use super::names::named_enum;
use super::{ExecutionProvider, OptionError, Precision};
use crate::{Error, Result};

/// The options of one EP as written: key -> text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpOptions(pub BTreeMap<String, String>);

impl EpOptions {
    /// Parses `key=value` strings (from `--ep-option`).
    pub fn parse(pairs: &[String]) -> Result<Self> {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::bad_input(format!("--ep-option `{pair}` is not of the form key=value")))?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(EpOptions(map))
    }

    /// `other`'s options over these.
    pub fn merged(&self, other: &EpOptions) -> EpOptions {
        let mut map = self.0.clone();
        map.extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        EpOptions(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// These options as `ep` takes them.
    pub fn typed(&self, ep: ExecutionProvider) -> std::result::Result<SessionOptions, OptionError> {
        SessionOptions::parse(ep, self)
    }

    /// A boolean option; `default` when absent.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                flag(v).ok_or_else(|| Error::bad_input(format!("EP option `{key}` is `{v}`; expected true or false")))
            }
        }
    }

    /// Intra-op threads, when set.
    pub fn threads(&self) -> Result<Option<usize>> {
        self.get("threads")
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| Error::bad_input(format!("EP option `threads` is `{v}`; expected a whole number")))
            })
            .transpose()
    }
}

/// `true` / `false` as the options write them (also 1 / 0, yes / no, on / off).
fn flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

named_enum! {
    /// OpenVINO's inference precision (`precision`, its `INFERENCE_PRECISION_HINT`), and the alternative
    /// precision `dfast tune --precision` times: a fixed precision, or `auto` (bf16 where the CPU has native
    /// bf16, f32 elsewhere; chosen when the session is created).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum PrecisionHint {
        F32 = "f32" | "fp32",
        Bf16 = "bf16",
        F16 = "f16" | "fp16",
        Auto = "auto",
    }
}

impl PrecisionHint {
    /// The fixed precision; `None` for `auto`.
    pub fn fixed(self) -> Option<Precision> {
        match self {
            PrecisionHint::F32 => Some(Precision::Fp32),
            PrecisionHint::Bf16 => Some(Precision::Bf16),
            PrecisionHint::F16 => Some(Precision::Fp16),
            PrecisionHint::Auto => None,
        }
    }

    /// The hint for a fixed precision.
    pub fn of(precision: Precision) -> Self {
        match precision {
            Precision::Fp32 => PrecisionHint::F32,
            Precision::Bf16 => PrecisionHint::Bf16,
            Precision::Fp16 => PrecisionHint::F16,
        }
    }
}

named_enum! {
    /// The CUDA EP's cuDNN convolution algorithm search (`cudnn_conv_algo_search`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ConvAlgo {
        Exhaustive = "exhaustive",
        Heuristic = "heuristic",
        Default = "default",
    }
}

named_enum! {
    /// OpenVINO's `PERFORMANCE_HINT`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum PerformanceHint {
        Latency = "latency",
        Throughput = "throughput",
    }
}

/// The keys every EP takes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Common {
    /// Intra-op threads of the session (OpenVINO: its own `num_of_threads`).
    pub threads: Option<usize>,
    /// The UNet's inputs and output in device buffers bound once (default: on cuda and tensorrt).
    pub io_binding: Option<bool>,
}

/// The CPU EP's options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuOptions {
    pub threads: Option<usize>,
    pub io_binding: Option<bool>,
}

/// The CUDA EP's options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaOptions {
    pub threads: Option<usize>,
    pub io_binding: Option<bool>,
    /// `enable_cuda_graph`, for the UNet session (needs `io_binding`).
    pub cuda_graph: Option<bool>,
    pub prefer_nhwc: Option<bool>,
    /// `use_tf32`.
    pub tf32: Option<bool>,
    /// `cudnn_conv_algo_search`.
    pub conv_algo: Option<ConvAlgo>,
    pub device_id: Option<u32>,
    /// ONNX Runtime's own CUDA provider options (`ort.<key>`), passed as they are.
    #[serde(skip)]
    pub ort: BTreeMap<String, String>,
}

/// The TensorRT EP's options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtOptions {
    pub threads: Option<usize>,
    pub io_binding: Option<bool>,
    /// `trt_fp16_enable`, `trt_bf16_enable`, `trt_int8_enable`.
    pub fp16: Option<bool>,
    pub bf16: Option<bool>,
    pub int8: Option<bool>,
    /// `trt_cuda_graph_enable`, for the UNet session.
    pub cuda_graph: Option<bool>,
    /// Engine and timing caches in `<component>/trt-cache/` (default on).
    pub engine_cache: Option<bool>,
    /// ONNX Runtime's own TensorRT provider options (`ort.<key>`), passed as they are.
    #[serde(skip)]
    pub ort: BTreeMap<String, String>,
}

/// The OpenVINO EP's options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenVinoOptions {
    pub threads: Option<usize>,
    pub io_binding: Option<bool>,
    /// `device_type` (default CPU).
    pub device: Option<String>,
    /// `INFERENCE_PRECISION_HINT` (default f32).
    pub precision: Option<PrecisionHint>,
    pub cache_dir: Option<String>,
    pub num_streams: Option<u32>,
    /// Compile each session for the shapes of its first run (OpenVINO's `reshape_input`), and again when they
    /// change: OpenVINO folds the shape arithmetic and plans memory once, as the peers' static shapes do.
    pub static_shapes: Option<bool>,
    /// The UNet's batch (the guidance pair) split into this many parts that run at the same time, each on a
    /// session of its own with its share of the cores (default 1). Each part keeps its threads busy without
    /// waiting on the others at every layer; each session holds its own copy of the weights.
    pub streams: Option<usize>,
    /// `ENABLE_CPU_PINNING` (OpenVINO's default: pinned where it runs one stream). Off whenever `streams` is
    /// above 1, so that the sessions' threads do not share a core.
    pub cpu_pinning: Option<bool>,
    /// `PERFORMANCE_HINT`.
    pub performance_hint: Option<PerformanceHint>,
    /// `DYNAMIC_QUANTIZATION_GROUP_SIZE` (0: off).
    pub dynamic_quantization_group_size: Option<u64>,
    /// ONNX Runtime's own OpenVINO provider options (`ort.<key>`), passed as they are.
    #[serde(skip)]
    pub ort: BTreeMap<String, String>,
}

/// The session options of one EP, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionOptions {
    Cpu(CpuOptions),
    Cuda(CudaOptions),
    TensorRt(TensorRtOptions),
    OpenVino(OpenVinoOptions),
}

/// The prefix of ONNX Runtime's own provider options.
const ORT_PREFIX: &str = "ort.";

impl SessionOptions {
    /// `options` as `ep` takes them: every key known, every value of the right type.
    pub fn parse(ep: ExecutionProvider, options: &EpOptions) -> std::result::Result<Self, OptionError> {
        let (ort, own): (BTreeMap<&str, &str>, BTreeMap<&str, &str>) =
            options.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).partition(|(k, _)| k.starts_with(ORT_PREFIX));
        let ort: BTreeMap<String, String> =
            ort.into_iter().map(|(k, v)| (k[ORT_PREFIX.len()..].to_string(), v.to_string())).collect();
        if ep == ExecutionProvider::Cpu
            && let Some(key) = ort.keys().next()
        {
            return Err(OptionError {
                key: format!("{ORT_PREFIX}{key}"),
                message: "the cpu execution provider takes no provider options of ONNX Runtime's".into(),
            });
        }
        let typed = match ep {
            ExecutionProvider::Cpu => from_text(&own).map(SessionOptions::Cpu),
            ExecutionProvider::Cuda => from_text(&own).map(|o| SessionOptions::Cuda(CudaOptions { ort, ..o })),
            ExecutionProvider::TensorRt => {
                from_text(&own).map(|o| SessionOptions::TensorRt(TensorRtOptions { ort, ..o }))
            }
            ExecutionProvider::OpenVino => {
                from_text(&own).map(|o| SessionOptions::OpenVino(OpenVinoOptions { ort, ..o }))
            }
        };
        typed.map_err(|e| explained(ep, e, options))
    }

    /// The keys every EP takes.
    pub fn common(&self) -> Common {
        let (threads, io_binding) = match self {
            SessionOptions::Cpu(o) => (o.threads, o.io_binding),
            SessionOptions::Cuda(o) => (o.threads, o.io_binding),
            SessionOptions::TensorRt(o) => (o.threads, o.io_binding),
            SessionOptions::OpenVino(o) => (o.threads, o.io_binding),
        };
        Common { threads, io_binding }
    }
}

/// serde's message about an option, as a sentence about the EP: a key it does not take, OpenVINO's
/// precision names.
fn explained(ep: ExecutionProvider, e: OptionError, options: &EpOptions) -> OptionError {
    let message = if let Some(rest) = e.message.strip_prefix("unknown field `") {
        let expected = rest.split_once(", expected ").map_or("none".into(), |(_, list)| list.replace('`', ""));
        format!("EP option(s) `{}` are not known for the {ep} execution provider; it takes {expected}", e.key)
    } else if ep == ExecutionProvider::OpenVino && e.key == "precision" {
        openvino_precision_names(options.get("precision").unwrap_or_default())
    } else {
        return e;
    };
    OptionError { key: e.key, message }
}

/// The sentence for an OpenVINO `precision` that is none of its names.
pub fn openvino_precision_names(value: &str) -> String {
    format!(
        "EP option `precision` is `{value}`; expected f32, bf16 or f16 for openvino, or auto (bf16 where the CPU has it)"
    )
}

/// Deserializes text values into `T`, naming the key that does not fit.
fn from_text<T: de::DeserializeOwned>(map: &BTreeMap<&str, &str>) -> std::result::Result<T, OptionError> {
    let entries = map.iter().map(|(k, v)| (*k, Text(v)));
    let deserializer = de::value::MapDeserializer::<_, de::value::Error>::new(entries);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde names an unknown field without its place; the key is the field itself.
        let key = match (key == ".", message.strip_prefix("unknown field `")) {
            (true, Some(rest)) => rest.split('`').next().unwrap_or_default().to_string(),
            (true, None) => String::new(),
            (false, _) => key,
        };
        OptionError { key, message }
    })
}

/// One option's text, read as the type its field has: `true` / `1` / `yes` for a flag, digits for a
/// number, the text itself for a string or a name.
struct Text<'a>(&'a str);

impl<'de> IntoDeserializer<'de, de::value::Error> for Text<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Text<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_str(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        match flag(self.0) {
            Some(b) => visitor.visit_bool(b),
            None => Err(de::Error::invalid_value(de::Unexpected::Str(self.0), &"true or false")),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        match self.0.parse::<u64>() {
            Ok(n) => visitor.visit_u64(n),
            Err(_) => Err(de::Error::invalid_value(de::Unexpected::Str(self.0), &"a whole number")),
        }
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutionProvider::{Cpu, Cuda, OpenVino, TensorRt};

    fn options(pairs: &[&str]) -> EpOptions {
        EpOptions::parse(&pairs.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn options_parse_merge_and_flags() {
        let a = EpOptions::parse(&["cuda_graph=true".into(), "threads = 2".into()]).unwrap();
        let b = EpOptions::parse(&["cuda_graph=0".into()]).unwrap();
        let m = a.merged(&b);
        assert!(!m.flag("cuda_graph", true).unwrap());
        assert_eq!(m.threads().unwrap(), Some(2));
        assert!(EpOptions::parse(&["nokey".into()]).is_err());
        assert!(EpOptions::parse(&["x=maybe".into()]).unwrap().flag("x", false).is_err());
    }

    #[test]
    fn each_ep_types_its_own_keys() {
        let SessionOptions::Cuda(cuda) =
            options(&["cuda_graph=yes", "threads=3", "conv_algo=HEURISTIC", "ort.gpu_mem_limit=1024"])
                .typed(Cuda)
                .unwrap()
        else {
            panic!("cuda options")
        };
        assert_eq!((cuda.cuda_graph, cuda.threads, cuda.conv_algo), (Some(true), Some(3), Some(ConvAlgo::Heuristic)));
        assert_eq!(cuda.ort.get("gpu_mem_limit").map(String::as_str), Some("1024"));
        let SessionOptions::OpenVino(ov) =
            options(&["precision=fp16", "performance_hint=latency"]).typed(OpenVino).unwrap()
        else {
            panic!("openvino options")
        };
        assert_eq!((ov.precision, ov.performance_hint), (Some(PrecisionHint::F16), Some(PerformanceHint::Latency)));
        assert_eq!(options(&["io_binding=true"]).typed(Cpu).unwrap().common().io_binding, Some(true));
        assert!(matches!(options(&["engine_cache=false"]).typed(TensorRt), Ok(SessionOptions::TensorRt(_))));
    }

    #[test]
    fn unknown_keys_and_wrong_values_name_the_key() {
        for (ep, pair, key, says) in [
            (
                Cuda,
                "cuda_grpah=true",
                "cuda_grpah",
                "are not known for the cuda execution provider; it takes one of threads",
            ),
            (Cpu, "prefer_nhwc=true", "prefer_nhwc", "are not known for the cpu execution provider"),
            (OpenVino, "cuda_graph=true", "cuda_graph", "are not known for the openvino execution provider"),
            (Cuda, "cuda_graph=maybe", "cuda_graph", "expected true or false"),
            (Cuda, "threads=two", "threads", "expected a whole number"),
            (OpenVino, "precision=int4", "precision", "expected f32, bf16 or f16 for openvino"),
            (Cuda, "conv_algo=fast", "conv_algo", "unknown variant `fast`"),
            (Cpu, "ort.use_arena=1", "ort.use_arena", "no provider options"),
        ] {
            let err = options(&[pair]).typed(ep).unwrap_err();
            assert_eq!(err.key, key, "{pair}: {err}");
            assert!(err.to_string().contains(says), "{pair}: {err}");
        }
    }

    #[test]
    fn hints_name_fixed_precisions() {
        assert_eq!("fp32".parse::<Precision>().map(PrecisionHint::of).unwrap(), PrecisionHint::F32);
        assert_eq!(PrecisionHint::parse("FP16").and_then(PrecisionHint::fixed), Some(Precision::Fp16));
        assert_eq!(PrecisionHint::Auto.fixed(), None);
        assert_eq!(PrecisionHint::Bf16.name(), "bf16");
    }
}
