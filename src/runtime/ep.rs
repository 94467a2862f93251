//! Execution providers: which one a run asks for, its options, and turning both into what ONNX Runtime
//! registers on a session.
//!
//! Options are `key = value` strings, from a converted folder's manifest (written from the profile's
//! `[session.<ep>]` table) and from `--ep-option key=value` on the command line, which wins. dfast
//! understands the keys below; any other key goes to ONNX Runtime as it is (ONNX Runtime rejects unknown
//! ones, so a typo is an error, not a silent no-op).
//!
//! | EP | dfast key | becomes |
//! |---|---|---|
//! | all | `threads` | intra-op threads of the session (openvino: `num_of_threads`) |
//! | cuda, tensorrt | `io_binding` (default true) | the UNet's inputs and output live in device memory |
//! | cuda | `cuda_graph` | `enable_cuda_graph`, UNet session only (needs `io_binding`) |
//! | cuda | `prefer_nhwc`, `tf32`, `conv_algo`, `device_id` | `prefer_nhwc`, `use_tf32`, `cudnn_conv_algo_search`, `device_id` |
//! | tensorrt | `fp16`, `bf16`, `int8`, `cuda_graph` | `trt_fp16_enable`, `trt_bf16_enable`, `trt_int8_enable`, `trt_cuda_graph_enable` |
//! | tensorrt | `engine_cache` (default true) | engine and timing caches in `<component>/trt-cache/` |
//! | openvino | `device` (default CPU), `precision` (f32 by default, bf16, f16, auto) | `device_type`; `load_config` with `INFERENCE_PRECISION_HINT` |
//! | openvino | `cache_dir`, `num_streams` | `cache_dir`, `num_streams` |
//! | openvino | `performance_hint` (latency, throughput), `dynamic_quantization_group_size` (0 = off) | `load_config` with `PERFORMANCE_HINT`, `DYNAMIC_QUANTIZATION_GROUP_SIZE` |
//!
//! OpenVINO `precision = "auto"` is resolved when the session is created, from what the CPU reports
//! (`/proc/cpuinfo`, [`CpuFeatures`]): bf16 on CPUs with native bf16 (AVX512-BF16 or AMX-BF16), f32
//! elsewhere (OpenVINO would emulate bf16 there, many times slower). [`resolved`] says what it became.

use std::collections::BTreeMap;
use std::path::Path;

use ort::ep::{ArbitrarilyConfigurableExecutionProvider, ExecutionProvider as _, ExecutionProviderDispatch};

use super::library::Flavour;
use crate::{Error, Result};

/// The execution providers dfast can be asked for (`passes::Target` when a conversion targets one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    #[cfg_attr(feature = "cli", value(name = "tensorrt", alias = "trt"))]
    #[serde(alias = "trt")]
    TensorRt,
    #[cfg_attr(feature = "cli", value(name = "openvino"))]
    OpenVino,
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ExecutionProvider::from_name(s)
    }
}

/// Every name `--ep` takes.
pub const EP_NAMES: [&str; 4] = ["cpu", "cuda", "tensorrt", "openvino"];

impl ExecutionProvider {
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" => Ok(ExecutionProvider::Cuda),
            "tensorrt" | "trt" => Ok(ExecutionProvider::TensorRt),
            "openvino" => Ok(ExecutionProvider::OpenVino),
            _ => Err(Error::bad_input(format!(
                "unknown execution provider `{name}`; expected one of: {}",
                EP_NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::TensorRt => "tensorrt",
            ExecutionProvider::OpenVino => "openvino",
        }
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

    /// The build of ONNX Runtime that has this EP.
    pub fn flavour(self) -> Flavour {
        match self {
            ExecutionProvider::Cpu => Flavour::Cpu,
            ExecutionProvider::Cuda | ExecutionProvider::TensorRt => Flavour::Gpu,
            ExecutionProvider::OpenVino => Flavour::OpenVino,
        }
    }

    /// Whether the UNet's tensors live in device memory (CUDA) rather than host memory.
    pub fn device_memory(self) -> bool {
        matches!(self, ExecutionProvider::Cuda | ExecutionProvider::TensorRt)
    }

    /// Fails with what is missing when the loaded library lacks this EP.
    pub(crate) fn check_available(self, library: &Path) -> Result<()> {
        if self == ExecutionProvider::Cpu {
            return Ok(());
        }
        let available = available_providers();
        if available.contains(&self.ort_name()) {
            return Ok(());
        }
        Err(Error::runtime(format!(
            "execution provider `{}` is not in the ONNX Runtime library at {} (it has {}): run \
             `experiment-scripts/setup_ort.sh {}` for the build that has it, or point --ort-lib at one",
            self.name(),
            library.display(),
            if available.is_empty() { "none listed".to_string() } else { available.join(", ") },
            self.flavour().name()
        )))
    }
}

/// The error for an EP whose libraries ONNX Runtime could not load: the missing piece, and where it
/// comes from.
pub(crate) fn unusable(ep: ExecutionProvider, e: &dyn std::fmt::Display) -> Error {
    let text = e.to_string();
    // "... Failed to load library X with error: libcublasLt.so.13: cannot open shared object file: ..."
    let cause = match text.rsplit_once("with error: ") {
        Some((head, missing)) => {
            let lib = head.rsplit('/').next().unwrap_or(head).trim();
            format!("{} (needed by {lib})", missing.trim().trim_end_matches(": No such file or directory"))
        }
        None => text.trim().replace('\n', " "),
    };
    let needs = match ep {
        ExecutionProvider::Cuda => {
            "; the CUDA 13 runtime, cuBLAS, cuFFT, cuRAND and cuDNN 9 libraries must be on LD_LIBRARY_PATH (PyPI nvidia-* packages or the system)"
        }
        ExecutionProvider::TensorRt => "; TensorRT 10 and the CUDA 13 and cuDNN 9 libraries must be on LD_LIBRARY_PATH",
        ExecutionProvider::OpenVino => {
            "; the OpenVINO libraries must sit next to the ONNX Runtime library (experiment-scripts/setup_ort.sh openvino)"
        }
        ExecutionProvider::Cpu => "",
    };
    Error::runtime(format!("the {} execution provider cannot be used: {cause}{needs}", ep.name()))
}

/// Which of dfast's EPs the loaded library was built with, by ONNX Runtime's names.
fn available_providers() -> Vec<&'static str> {
    type Check = fn() -> ort::Result<bool>;
    let checks: [(&str, Check); 4] = [
        ("CPUExecutionProvider", ort::ep::CPU::is_available),
        ("CUDAExecutionProvider", ort::ep::CUDA::is_available),
        ("TensorrtExecutionProvider", ort::ep::TensorRT::is_available),
        ("OpenVINOExecutionProvider", ort::ep::OpenVINO::is_available),
    ];
    checks.into_iter().filter(|(_, check)| check().unwrap_or(false)).map(|(name, _)| name).collect()
}

/// Options for an EP: dfast's keys and ONNX Runtime's own (see the module docs).
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

    /// A boolean option; `default` when absent.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(Error::bad_input(format!("EP option `{key}` is `{v}`; expected true or false"))),
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

/// Which session the options are for: CUDA graphs apply to the UNet alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRole {
    Unet,
    Other,
}

/// Keys dfast reads itself; the rest go to ONNX Runtime.
const DFAST_KEYS: [&str; 2] = ["threads", "io_binding"];

fn bool01(v: bool) -> &'static str {
    if v { "1" } else { "0" }
}

/// The provider to register for one session; failing to register it is an error, never a silent CPU
/// fallback. `model_dir` holds the component (TensorRT caches go there).
pub(crate) fn dispatch(
    ep: ExecutionProvider,
    options: &EpOptions,
    role: SessionRole,
    model_dir: &Path,
) -> Result<Vec<ExecutionProviderDispatch>> {
    let mut rest: BTreeMap<String, String> = options
        .0
        .iter()
        .filter(|(k, _)| !DFAST_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let eps = match ep {
        ExecutionProvider::Cpu => {
            if !rest.is_empty() {
                return Err(Error::bad_input(format!(
                    "EP option(s) {} are not known for the cpu execution provider",
                    rest.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                )));
            }
            vec![ort::ep::CPU::default().build().error_on_failure()]
        }
        ExecutionProvider::Cuda => vec![cuda(options, role, &mut rest)?.build().error_on_failure()],
        ExecutionProvider::TensorRt => {
            let mut trt = ort::ep::TensorRT::default();
            let cache = model_dir.join("trt-cache");
            if options.flag("engine_cache", true)? {
                let c = cache.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&c)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&c);
            }
            rest.remove("engine_cache");
            for (key, ort_key) in
                [("fp16", "trt_fp16_enable"), ("bf16", "trt_bf16_enable"), ("int8", "trt_int8_enable")]
            {
                if rest.remove(key).is_some() {
                    trt = trt.with_arbitrary_config(ort_key, bool01(options.flag(key, false)?));
                }
            }
            if rest.remove("cuda_graph").is_some() && role == SessionRole::Unet {
                trt = trt.with_cuda_graph(options.flag("cuda_graph", false)?);
            }
            for (k, v) in std::mem::take(&mut rest) {
                trt = trt.with_arbitrary_config(k, v);
            }
            // Nodes TensorRT does not take run on CUDA, as ONNX Runtime's TensorRT examples set up.
            vec![
                trt.build().error_on_failure(),
                cuda(&EpOptions::default(), role, &mut BTreeMap::new())?.build().error_on_failure(),
            ]
        }
        ExecutionProvider::OpenVino => {
            let device = rest.remove("device").unwrap_or_else(|| "CPU".to_string());
            let mut ov = ort::ep::OpenVINO::default().with_device_type(&device);
            if let Some(n) = options.threads()? {
                // OpenVINO runs its own threads: ONNX Runtime's intra-op setting does not reach them.
                ov = ov.with_num_threads(n);
            }
            // OpenVINO picks bf16 by itself on CPUs with bf16 units: dfast asks for f32 unless told otherwise,
            // so that an fp32 conversion runs in fp32 everywhere.
            {
                let p = rest.remove("precision").unwrap_or_else(|| "f32".to_string());
                let hint = openvino_precision(&p, &CpuFeatures::host())?;
                let mut config = serde_json::Map::new();
                config.insert("INFERENCE_PRECISION_HINT".into(), hint.into());
                if let Some(v) = rest.remove("performance_hint") {
                    let v = match v.to_ascii_lowercase().as_str() {
                        "latency" => "LATENCY",
                        "throughput" => "THROUGHPUT",
                        other => {
                            return Err(Error::bad_input(format!(
                                "EP option `performance_hint` is `{other}`; expected latency or throughput"
                            )));
                        }
                    };
                    config.insert("PERFORMANCE_HINT".into(), v.into());
                }
                if let Some(v) = rest.remove("dynamic_quantization_group_size") {
                    let n: u64 = v.parse().map_err(|_| {
                        Error::bad_input(format!(
                            "EP option `dynamic_quantization_group_size` is `{v}`; expected a whole number (0: off)"
                        ))
                    })?;
                    config.insert("DYNAMIC_QUANTIZATION_GROUP_SIZE".into(), n.to_string().into());
                }
                let config = serde_json::json!({ device.clone(): config });
                ov = ov.with_arbitrary_config("load_config", config.to_string());
            }
            for (k, v) in std::mem::take(&mut rest) {
                ov = ov.with_arbitrary_config(k, v);
            }
            vec![ov.build().error_on_failure()]
        }
    };
    Ok(eps)
}

/// What a CPU reports that decides precisions: native bf16 and int8 dot-product instructions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuFeatures {
    pub avx512_bf16: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    pub avx512_vnni: bool,
    pub avx_vnni: bool,
}

impl CpuFeatures {
    /// The flags of the first processor in `/proc/cpuinfo` text (the `flags` line; `Features` on Arm,
    /// where none of these exist).
    pub fn from_cpuinfo(text: &str) -> Self {
        let flags: Vec<&str> = text
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == "flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.split_whitespace().collect())
            .unwrap_or_default();
        let has = |f: &str| flags.contains(&f);
        CpuFeatures {
            avx512_bf16: has("avx512_bf16"),
            amx_bf16: has("amx_bf16"),
            amx_int8: has("amx_int8"),
            avx512_vnni: has("avx512_vnni"),
            avx_vnni: has("avx_vnni"),
        }
    }

    /// This machine's (none where `/proc/cpuinfo` cannot be read).
    pub fn host() -> Self {
        std::fs::read_to_string("/proc/cpuinfo").map(|t| Self::from_cpuinfo(&t)).unwrap_or_default()
    }

    /// bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16).
    pub fn native_bf16(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }

    /// int8 dot products in hardware (VNNI or AMX-INT8).
    pub fn int8_dot(&self) -> bool {
        self.avx512_vnni || self.avx_vnni || self.amx_int8
    }

    /// The flags that are set, by their `/proc/cpuinfo` names.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("avx512_bf16", self.avx512_bf16),
            ("amx_bf16", self.amx_bf16),
            ("amx_int8", self.amx_int8),
            ("avx512_vnni", self.avx512_vnni),
            ("avx_vnni", self.avx_vnni),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n)
        .collect()
    }
}

/// OpenVINO's `INFERENCE_PRECISION_HINT` for the `precision` option; `auto` follows `cpu`.
pub fn openvino_precision(value: &str, cpu: &CpuFeatures) -> Result<&'static str> {
    match value.to_ascii_lowercase().as_str() {
        "f32" | "fp32" => Ok("f32"),
        "bf16" => Ok("bf16"),
        "f16" | "fp16" => Ok("f16"),
        "auto" => Ok(if cpu.native_bf16() { "bf16" } else { "f32" }),
        other => Err(Error::bad_input(format!(
            "EP option `precision` is `{other}`; expected f32, bf16 or f16 for openvino, or auto (bf16 where the CPU has it)"
        ))),
    }
}

/// The options as the session gets them: `precision = "auto"` (openvino) becomes `auto:bf16` or
/// `auto:f32`, what this machine's CPU chose.
pub fn resolved(ep: ExecutionProvider, options: &EpOptions) -> Result<EpOptions> {
    let mut out = options.clone();
    if ep == ExecutionProvider::OpenVino
        && let Some(p) = options.get("precision")
        && p.eq_ignore_ascii_case("auto")
    {
        let chosen = openvino_precision(p, &CpuFeatures::host())?;
        out.0.insert("precision".into(), format!("auto:{chosen}"));
    }
    Ok(out)
}

fn cuda(options: &EpOptions, role: SessionRole, rest: &mut BTreeMap<String, String>) -> Result<ort::ep::CUDA> {
    let mut cuda = ort::ep::CUDA::default();
    for (key, ort_key) in [("prefer_nhwc", "prefer_nhwc"), ("tf32", "use_tf32")] {
        if rest.remove(key).is_some() {
            cuda = cuda.with_arbitrary_config(ort_key, bool01(options.flag(key, false)?));
        }
    }
    if rest.remove("cuda_graph").is_some() && role == SessionRole::Unet {
        if !options.flag("io_binding", true)? {
            return Err(Error::bad_input(
                "EP option `cuda_graph` needs `io_binding` (the UNet's tensors on the device)",
            ));
        }
        cuda = cuda.with_arbitrary_config("enable_cuda_graph", bool01(options.flag("cuda_graph", false)?));
    }
    if let Some(v) = rest.remove("conv_algo") {
        let v = match v.to_ascii_lowercase().as_str() {
            "exhaustive" => "EXHAUSTIVE",
            "heuristic" => "HEURISTIC",
            "default" => "DEFAULT",
            other => {
                return Err(Error::bad_input(format!(
                    "EP option `conv_algo` is `{other}`; expected exhaustive, heuristic or default"
                )));
            }
        };
        cuda = cuda.with_arbitrary_config("cudnn_conv_algo_search", v);
    }
    for (k, v) in std::mem::take(rest) {
        cuda = cuda.with_arbitrary_config(k, v);
    }
    Ok(cuda)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_clear() {
        for name in EP_NAMES {
            assert_eq!(ExecutionProvider::from_name(name).unwrap().name(), name);
        }
        let err = ExecutionProvider::from_name("rocm").unwrap_err().to_string();
        assert!(err.contains("rocm") && err.contains("cpu, cuda, tensorrt, openvino"), "{err}");
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

    /// Excerpts of `/proc/cpuinfo`: the 2-core Xeon (AVX-512 VNNI, no bf16) and the AMD EPYC Zen 4
    /// (AVX512-BF16) that the CPU benchmarks ran on, and a Sapphire Rapids with AMX.
    const XEON: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\n\
        flags\t\t: fpu vme de pse tsc msr avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni\n\
        bugs\t\t: spectre_v1\n";
    const EPYC: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n\
        flags\t\t: fpu avx2 avx512f avx512dq avx512_bf16 avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg\n";
    const SPR: &str = "flags\t\t: fpu avx512f avx_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n";

    #[test]
    fn cpu_flags_are_read_from_cpuinfo_text() {
        let xeon = CpuFeatures::from_cpuinfo(XEON);
        assert!(!xeon.native_bf16() && xeon.int8_dot(), "{xeon:?}");
        assert_eq!(xeon.names(), ["avx512_vnni"]);
        let epyc = CpuFeatures::from_cpuinfo(EPYC);
        assert!(epyc.native_bf16() && epyc.avx512_vnni && !epyc.amx_bf16, "{epyc:?}");
        let spr = CpuFeatures::from_cpuinfo(SPR);
        assert!(spr.amx_bf16 && spr.amx_int8 && spr.avx_vnni && spr.native_bf16());
        // A flag name that merely contains another is not it; no flags line: nothing.
        assert!(!CpuFeatures::from_cpuinfo("flags\t: avx512_bf16x amx_bf16_extra\n").native_bf16());
        assert_eq!(CpuFeatures::from_cpuinfo("Features\t: fp asimd\n"), CpuFeatures::default());
    }

    #[test]
    fn auto_precision_follows_the_cpu() {
        let (xeon, epyc) = (CpuFeatures::from_cpuinfo(XEON), CpuFeatures::from_cpuinfo(EPYC));
        assert_eq!(openvino_precision("auto", &xeon).unwrap(), "f32");
        assert_eq!(openvino_precision("AUTO", &epyc).unwrap(), "bf16");
        assert_eq!(openvino_precision("auto", &CpuFeatures::from_cpuinfo(SPR)).unwrap(), "bf16");
        assert_eq!(openvino_precision("fp32", &epyc).unwrap(), "f32");
        let err = openvino_precision("int4", &epyc).unwrap_err().to_string();
        assert!(err.contains("`precision`") && err.contains("auto"), "{err}");
        // What a session on this machine gets says what auto became.
        let opts = EpOptions::parse(&["precision=auto".into()]).unwrap();
        let host = if CpuFeatures::host().native_bf16() { "auto:bf16" } else { "auto:f32" };
        assert_eq!(resolved(ExecutionProvider::OpenVino, &opts).unwrap().get("precision"), Some(host));
        assert_eq!(resolved(ExecutionProvider::Cpu, &opts).unwrap(), opts);
    }

    #[test]
    fn flavours_follow_the_ep() {
        assert_eq!(ExecutionProvider::Cuda.flavour(), Flavour::Gpu);
        assert_eq!(ExecutionProvider::TensorRt.flavour(), Flavour::Gpu);
        assert_eq!(ExecutionProvider::OpenVino.flavour(), Flavour::OpenVino);
        assert_eq!(ExecutionProvider::Cpu.flavour(), Flavour::Cpu);
    }
}
