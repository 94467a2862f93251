//! Execution providers: which one a run asks for, its options, and turning both into what ONNX Runtime
//! registers on a session.
//!
//! Options come typed per EP ([`crate::settings::SessionOptions`]), from a converted folder's manifest
//! (written from the profile's `[session.<ep>]` table) and from `--ep-option key=value` on the command line,
//! which wins. An unknown key is refused when the options are read; ONNX Runtime's own provider options go
//! through as `ort.<key>` (cuda, tensorrt, openvino), and ONNX Runtime refuses the ones it does not know.
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
//! | openvino | `performance_hint` (latency, throughput), `dynamic_quantization_group_size` (0 = off), `cpu_pinning` | `load_config` with `PERFORMANCE_HINT`, `DYNAMIC_QUANTIZATION_GROUP_SIZE`, `ENABLE_CPU_PINNING` |
//! | openvino | `static_shapes` | `reshape_input` with the shapes of the session's first run (sessions made then, see `runtime::session`) |
//! | openvino | `streams` (UNet) | the batch split into that many parts run at once, each on its own session with `num_of_threads` its share of the cores and `ENABLE_CPU_PINNING` off |
//!
//! OpenVINO `precision = "auto"` is resolved when the session is created, from what the CPU reports
//! (`/proc/cpuinfo`, [`crate::host::CpuFeatures`]): bf16 on CPUs with native bf16 (AVX512-BF16 or AMX-BF16), f32
//! elsewhere (OpenVINO would emulate bf16 there, many times slower). [`resolved`] says what it became.

use std::path::Path;

use ort::ep::{ArbitrarilyConfigurableExecutionProvider, ExecutionProvider as _, ExecutionProviderDispatch};

use super::library::Flavour;
use crate::host::CpuFeatures;
use crate::settings::{
    CudaOptions, EpOptions, ExecutionProvider, PrecisionHint, SessionOptions, openvino_precision_names,
};
use crate::{Error, Result};

/// Fails with what is missing when the loaded library lacks `ep`.
pub(crate) fn check_available(ep: ExecutionProvider, library: &Path) -> Result<()> {
    if ep == ExecutionProvider::Cpu {
        return Ok(());
    }
    let available = available_providers();
    if available.contains(&ep.ort_name()) {
        return Ok(());
    }
    Err(Error::runtime(format!(
        "execution provider `{}` is not in the ONNX Runtime library at {} (it has {}): run \
         `experiment-scripts/setup_ort.sh {}` for the build that has it, or point --ort-lib at one",
        ep.name(),
        library.display(),
        if available.is_empty() { "none listed".to_string() } else { available.join(", ") },
        Flavour::of(ep).name()
    )))
}

/// The error for an EP whose libraries ONNX Runtime could not load: the missing piece, and where it
/// comes from.
pub(crate) fn unusable(ep: ExecutionProvider, e: ort::Error) -> Error {
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
    Error::ort(format!("the {} execution provider cannot be used: {cause}{needs}", ep.name()), e)
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

/// Which session the options are for: CUDA graphs apply to the UNet alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRole {
    Unet,
    Other,
}

fn bool01(v: bool) -> &'static str {
    if v { "1" } else { "0" }
}

/// The provider to register for one session; failing to register it is an error, never a silent CPU
/// fallback. `model_dir` holds the component (TensorRT caches go there).
pub(crate) fn dispatch(
    options: &SessionOptions,
    role: SessionRole,
    model_dir: &Path,
) -> Result<Vec<ExecutionProviderDispatch>> {
    let unet = role == SessionRole::Unet;
    let eps = match options {
        SessionOptions::Cpu(_) => vec![ort::ep::CPU::default().build().error_on_failure()],
        SessionOptions::Cuda(o) => vec![cuda(o, role)?.build().error_on_failure()],
        SessionOptions::TensorRt(o) => {
            let mut trt = ort::ep::TensorRT::default();
            if o.engine_cache.unwrap_or(true) {
                let cache = model_dir.join("trt-cache").display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&cache)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&cache);
            }
            for (flag, ort_key) in
                [(o.fp16, "trt_fp16_enable"), (o.bf16, "trt_bf16_enable"), (o.int8, "trt_int8_enable")]
            {
                if let Some(on) = flag {
                    trt = trt.with_arbitrary_config(ort_key, bool01(on));
                }
            }
            if let Some(on) = o.cuda_graph.filter(|_| unet) {
                trt = trt.with_cuda_graph(on);
            }
            for (k, v) in &o.ort {
                trt = trt.with_arbitrary_config(k, v);
            }
            // Nodes TensorRT does not take run on CUDA, as ONNX Runtime's TensorRT examples set up.
            vec![trt.build().error_on_failure(), cuda(&CudaOptions::default(), role)?.build().error_on_failure()]
        }
        SessionOptions::OpenVino(o) => {
            let device = o.device.clone().unwrap_or_else(|| "CPU".to_string());
            let mut ov = ort::ep::OpenVINO::default().with_device_type(&device);
            if let Some(n) = o.threads {
                // OpenVINO runs its own threads: ONNX Runtime's intra-op setting does not reach them.
                ov = ov.with_num_threads(n);
            }
            // OpenVINO picks bf16 by itself on CPUs with bf16 units: dfast asks for f32 unless told otherwise,
            // so that an fp32 conversion runs in fp32 everywhere.
            let hint = openvino_hint(o.precision.unwrap_or(PrecisionHint::F32), &CpuFeatures::host());
            let mut config = serde_json::Map::new();
            config.insert("INFERENCE_PRECISION_HINT".into(), hint.name().into());
            if let Some(h) = o.performance_hint {
                config.insert("PERFORMANCE_HINT".into(), h.name().to_ascii_uppercase().into());
            }
            if let Some(n) = o.dynamic_quantization_group_size {
                config.insert("DYNAMIC_QUANTIZATION_GROUP_SIZE".into(), n.to_string().into());
            }
            if let Some(on) = o.cpu_pinning {
                config.insert("ENABLE_CPU_PINNING".into(), if on { "YES" } else { "NO" }.into());
            }
            ov = ov.with_arbitrary_config("load_config", serde_json::json!({ device: config }).to_string());
            if let Some(dir) = &o.cache_dir {
                ov = ov.with_arbitrary_config("cache_dir", dir);
            }
            if let Some(n) = o.num_streams {
                ov = ov.with_arbitrary_config("num_streams", n.to_string());
            }
            for (k, v) in &o.ort {
                ov = ov.with_arbitrary_config(k, v);
            }
            vec![ov.build().error_on_failure()]
        }
    };
    Ok(eps)
}

fn cuda(o: &CudaOptions, role: SessionRole) -> Result<ort::ep::CUDA> {
    let mut cuda = ort::ep::CUDA::default();
    for (flag, ort_key) in [(o.prefer_nhwc, "prefer_nhwc"), (o.tf32, "use_tf32")] {
        if let Some(on) = flag {
            cuda = cuda.with_arbitrary_config(ort_key, bool01(on));
        }
    }
    if let Some(on) = o.cuda_graph.filter(|_| role == SessionRole::Unet) {
        if !o.io_binding.unwrap_or(true) {
            return Err(Error::bad_input(
                "EP option `cuda_graph` needs `io_binding` (the UNet's tensors on the device)",
            ));
        }
        cuda = cuda.with_arbitrary_config("enable_cuda_graph", bool01(on));
    }
    if let Some(algo) = o.conv_algo {
        cuda = cuda.with_arbitrary_config("cudnn_conv_algo_search", algo.name().to_ascii_uppercase());
    }
    if let Some(id) = o.device_id {
        cuda = cuda.with_arbitrary_config("device_id", id.to_string());
    }
    for (k, v) in &o.ort {
        cuda = cuda.with_arbitrary_config(k, v);
    }
    Ok(cuda)
}

/// The hint OpenVINO gets: `auto` becomes bf16 on CPUs with native bf16, f32 elsewhere (OpenVINO would
/// emulate bf16 there, many times slower).
pub fn openvino_hint(hint: PrecisionHint, cpu: &CpuFeatures) -> PrecisionHint {
    match hint {
        PrecisionHint::Auto if cpu.native_bf16() => PrecisionHint::Bf16,
        PrecisionHint::Auto => PrecisionHint::F32,
        fixed => fixed,
    }
}

/// OpenVINO's `INFERENCE_PRECISION_HINT` for the `precision` option text; `auto` follows `cpu`.
pub fn openvino_precision(value: &str, cpu: &CpuFeatures) -> Result<&'static str> {
    let hint = PrecisionHint::parse(value).ok_or_else(|| Error::bad_input(openvino_precision_names(value)))?;
    Ok(openvino_hint(hint, cpu).name())
}

/// The options as the session gets them: `precision = "auto"` (openvino) becomes `auto:bf16` or
/// `auto:f32`, what this machine's CPU chose.
pub fn resolved(ep: ExecutionProvider, options: &EpOptions) -> Result<EpOptions> {
    let mut out = options.clone();
    if ep == ExecutionProvider::OpenVino
        && let Some(p) = options.get("precision")
        && PrecisionHint::parse(p) == Some(PrecisionHint::Auto)
    {
        let chosen = openvino_hint(PrecisionHint::Auto, &CpuFeatures::host());
        out.0.insert("precision".into(), format!("auto:{chosen}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::tests::{EPYC, SPR, XEON};

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
        assert_eq!(Flavour::of(ExecutionProvider::Cuda), Flavour::Gpu);
        assert_eq!(Flavour::of(ExecutionProvider::TensorRt), Flavour::Gpu);
        assert_eq!(Flavour::of(ExecutionProvider::OpenVino), Flavour::OpenVino);
        assert_eq!(Flavour::of(ExecutionProvider::Cpu), Flavour::Cpu);
    }
}
