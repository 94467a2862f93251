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
//!
//! OpenVINO's CPU plugin takes a bf16 or f16 hint only on CPUs with the instructions it needs, and otherwise
//! keeps f32 without a word ([`openvino_cpu_precision`]): bf16 needs AVX-512 (F, BW, VL, DQ; emulated where
//! there is no AVX512-BF16 or AMX) or AVX2 with AVX-VNNI-INT8 and AVX-NE-CONVERT; f16 needs AVX512-FP16 or
//! the same AVX2 extensions. An explicit `precision=bf16` (or f16) on a CPU without them runs f32 with a
//! warning ([`precision_warning`]), and [`resolved`] records it as `bf16:f32` (asked, ran), as `auto:bf16`.

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

/// The error for an EP that ONNX Runtime could not register: a library it could not load (the missing piece,
/// and where it comes from), else the cause ONNX Runtime logged (`logged`, its last error) where its error
/// value says no more than "Failed to load provider", with the EP option it concerns.
pub(crate) fn unusable(
    ep: ExecutionProvider,
    e: ort::Error,
    logged: Option<String>,
    options: &SessionOptions,
) -> Error {
    let text = e.to_string();
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
    // "... Failed to load library X with error: libcublasLt.so.13: cannot open shared object file: ..."
    let (cause, needs) = match (text.rsplit_once("with error: "), logged) {
        (Some((head, missing)), _) => {
            let lib = head.rsplit('/').next().unwrap_or(head).trim();
            (format!("{} (needed by {lib})", missing.trim().trim_end_matches(": No such file or directory")), needs)
        }
        // "/onnxruntime/.../openvino_provider_factory.cc:141 std::string ...ParseDeviceType(...) [ERROR]
        // [OpenVINO] Device GPU is not available": the text after the last bracket.
        (None, Some(logged)) => {
            let cause = logged.rsplit_once("] ").map_or(logged.as_str(), |(_, c)| c).trim().to_string();
            let option = match options {
                SessionOptions::OpenVino(o) => o.device.as_ref().map(|d| format!(" (EP option `device={d}`)")),
                _ => None,
            };
            (cause + &option.unwrap_or_default(), "")
        }
        (None, None) => (text.trim().replace('\n', " "), needs),
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

/// The precision OpenVINO's CPU plugin computes in when given `hint` (auto already resolved) on `cpu`.
/// OpenVINO 2025.4 (`intel_cpu` plugin, `Config::readProperties` and `utils/precision_support.cpp`) sets
/// the inference precision to bf16 only where oneDNN may use `avx512_core` or `avx2_vnni_2`, to f16 only
/// where it may use `avx512_core_fp16` or `avx2_vnni_2`, and otherwise keeps f32 without an error.
pub fn openvino_cpu_precision(hint: PrecisionHint, cpu: &CpuFeatures) -> PrecisionHint {
    match openvino_hint(hint, cpu) {
        PrecisionHint::Bf16 if !(cpu.avx512_core() || cpu.avx2_vnni_2()) => PrecisionHint::F32,
        PrecisionHint::F16 if !((cpu.avx512_core() && cpu.avx512_fp16) || cpu.avx2_vnni_2()) => PrecisionHint::F32,
        other => other,
    }
}

/// The OpenVINO precision the options ask for and the one the CPU plugin will run, when they differ (an
/// OpenVINO session on the CPU device asking for bf16 or f16 on a CPU that cannot compute in it).
fn openvino_precision_dropped(
    ep: ExecutionProvider,
    options: &EpOptions,
    cpu: &CpuFeatures,
) -> Option<(PrecisionHint, PrecisionHint)> {
    let SessionOptions::OpenVino(o) = options.typed(ep).ok()? else { return None };
    if !o.device.as_deref().unwrap_or("CPU").eq_ignore_ascii_case("CPU") {
        return None;
    }
    let asked = openvino_hint(o.precision.unwrap_or(PrecisionHint::F32), cpu);
    let runs = openvino_cpu_precision(asked, cpu);
    (runs != asked).then_some((asked, runs))
}

/// A warning for an OpenVINO precision that `cpu` cannot compute in: OpenVINO runs f32 instead, and says
/// nothing itself.
pub fn precision_warning(ep: ExecutionProvider, options: &EpOptions, cpu: &CpuFeatures) -> Option<String> {
    let (asked, runs) = openvino_precision_dropped(ep, options, cpu)?;
    let needs = match asked {
        PrecisionHint::F16 => "AVX512-FP16",
        _ => "AVX-512 (F, BW, VL, DQ)",
    };
    Some(format!(
        "OpenVINO runs `precision={asked}` in {runs} on this CPU: its CPU plugin computes in {asked} only with {needs} \
         or with AVX-VNNI-INT8 and AVX-NE-CONVERT, which this CPU lacks (`precision=auto` picks bf16 where the \
         CPU has it natively)"
    ))
}

/// The options as the session gets them: `precision = "auto"` (openvino) becomes `auto:bf16` or
/// `auto:f32`, what this machine's CPU chose; a precision the CPU plugin cannot compute in becomes
/// `bf16:f32` (asked, ran).
pub fn resolved(ep: ExecutionProvider, options: &EpOptions) -> Result<EpOptions> {
    resolved_on(ep, options, &CpuFeatures::host())
}

fn resolved_on(ep: ExecutionProvider, options: &EpOptions, cpu: &CpuFeatures) -> Result<EpOptions> {
    let mut out = options.clone();
    if ep != ExecutionProvider::OpenVino {
        return Ok(out);
    }
    if let Some(p) = options.get("precision")
        && PrecisionHint::parse(p) == Some(PrecisionHint::Auto)
    {
        let chosen = openvino_hint(PrecisionHint::Auto, cpu);
        out.0.insert("precision".into(), format!("auto:{chosen}"));
    }
    if let Some((asked, runs)) = openvino_precision_dropped(ep, options, cpu) {
        out.0.insert("precision".into(), format!("{asked}:{runs}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::tests::{ARROW_LAKE, EPYC, SPR, XEON, ZEN2};

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

    /// What OpenVINO's CPU plugin computes in, per hint and CPU: bf16 on AVX-512 (native on Zen 4 and
    /// Sapphire Rapids, emulated on the AVX-512 VNNI Xeon) and on AVX2 with AVX-VNNI-INT8 and AVX-NE-CONVERT;
    /// f16 only with AVX512-FP16 or those AVX2 extensions; f32 for both on an AVX2-only CPU.
    #[test]
    fn openvino_keeps_f32_where_the_cpu_lacks_what_the_hint_needs() {
        use PrecisionHint::{Auto, Bf16, F16, F32};
        for (name, text, bf16, f16, auto) in [
            ("zen2", ZEN2, F32, F32, F32),
            ("xeon", XEON, Bf16, F32, F32),
            ("epyc", EPYC, Bf16, F32, Bf16),
            ("spr", SPR, Bf16, F16, Bf16),
            ("arrow lake", ARROW_LAKE, Bf16, F16, F32),
        ] {
            let cpu = CpuFeatures::from_cpuinfo(text);
            let runs: Vec<_> = [Bf16, F16, Auto, F32].iter().map(|&h| openvino_cpu_precision(h, &cpu)).collect();
            assert_eq!(runs, [bf16, f16, auto, F32], "{name}");
        }
    }

    #[test]
    fn a_precision_the_cpu_cannot_run_is_said_and_recorded() {
        let (zen2, epyc, spr) =
            (CpuFeatures::from_cpuinfo(ZEN2), CpuFeatures::from_cpuinfo(EPYC), CpuFeatures::from_cpuinfo(SPR));
        let ov = ExecutionProvider::OpenVino;
        let opts = |o: &[&str]| EpOptions::parse(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let bf16 = opts(&["precision=bf16"]);
        let warning = precision_warning(ov, &bf16, &zen2).expect("bf16 on an AVX2-only CPU is said");
        assert!(warning.starts_with("OpenVINO runs `precision=bf16` in f32 on this CPU"), "{warning}");
        assert!(warning.contains("AVX-512 (F, BW, VL, DQ)") && warning.contains("AVX-NE-CONVERT"), "{warning}");
        assert_eq!(resolved_on(ov, &bf16, &zen2).unwrap().get("precision"), Some("bf16:f32"));
        // Where the plugin runs it: nothing to say, the option as asked.
        assert_eq!(precision_warning(ov, &bf16, &epyc), None);
        assert_eq!(resolved_on(ov, &bf16, &epyc).unwrap().get("precision"), Some("bf16"));
        // f16 on Zen 4 (no AVX512-FP16) runs f32; on Sapphire Rapids f16.
        let f16 = opts(&["precision=f16"]);
        let warning = precision_warning(ov, &f16, &epyc).expect("f16 without AVX512-FP16 is said");
        assert!(warning.contains("`precision=f16` in f32") && warning.contains("AVX512-FP16"), "{warning}");
        assert_eq!(resolved_on(ov, &f16, &epyc).unwrap().get("precision"), Some("f16:f32"));
        assert_eq!(precision_warning(ov, &f16, &spr), None);
        // auto and f32 never warn; auto records its choice.
        for p in ["precision=auto", "precision=f32", "threads=2"] {
            assert_eq!(precision_warning(ov, &opts(&[p]), &zen2), None, "{p}");
        }
        assert_eq!(resolved_on(ov, &opts(&["precision=auto"]), &zen2).unwrap().get("precision"), Some("auto:f32"));
        // Another OpenVINO device, or another EP, is not the CPU plugin's business.
        assert_eq!(precision_warning(ov, &opts(&["precision=bf16", "device=GPU"]), &zen2), None);
        assert!(precision_warning(ov, &opts(&["precision=bf16", "device=cpu"]), &zen2).is_some());
        assert_eq!(precision_warning(ExecutionProvider::Cpu, &EpOptions::default(), &zen2), None);
    }

    #[test]
    fn flavours_follow_the_ep() {
        assert_eq!(Flavour::of(ExecutionProvider::Cuda), Flavour::Gpu);
        assert_eq!(Flavour::of(ExecutionProvider::TensorRt), Flavour::Gpu);
        assert_eq!(Flavour::of(ExecutionProvider::OpenVino), Flavour::OpenVino);
        assert_eq!(Flavour::of(ExecutionProvider::Cpu), Flavour::Cpu);
    }
}
