//! The manifest `dfast convert` writes into every converted folder (`dfast-manifest.json`): what was done
//! to the source, for which execution provider and precision, and the session options the folder runs with.
//! One type, written by `convert` and read back through it by `pipeline` and `bench`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::CpuFeatures;
use crate::settings::{EpOptions, ExecutionProvider, Precision};
use crate::{Error, Result};

/// The manifest's file name in a converted folder.
pub const MANIFEST: &str = "dfast-manifest.json";

/// What happened to one component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentReport {
    pub component: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub passes: Vec<PassRecord>,
    /// Precision the component was written in (fp32 where it was kept so).
    pub precision: Precision,
    /// Nodes per op after the conversion (`com.microsoft::SkipLayerNormalization`, `Conv`, ...).
    #[serde(default)]
    pub ops: BTreeMap<String, usize>,
    pub seconds: f64,
}

/// What one pass did, for the conversion manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassRecord {
    pub pass: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub initializers_before: usize,
    pub initializers_after: usize,
    /// Patterns rewritten, as counted by the pass (`onnx::Patch::count_rewrite`).
    pub rewrites: usize,
    /// Patches applied before the pass reached its fixed point.
    pub rounds: usize,
    /// The settings the pass ran with (`passes::Pass::settings`), when it has any.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub settings: serde_json::Value,
}

impl PassRecord {
    /// True when the pass changed nothing.
    pub fn unchanged(&self) -> bool {
        self.rounds == 0
    }
}

/// One LoRA file merged into the weights at conversion (`convert --lora`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraRecord {
    /// The file's name.
    pub file: String,
    pub sha256: String,
    pub scale: f32,
}

/// How int8-static was calibrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Prompts, each one image.
    pub prompts: usize,
    /// Denoising steps per prompt; every UNet call is a calibration sample.
    pub steps: usize,
    /// Image size; default the pipeline's.
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Ranges from an earlier conversion instead of running calibration.
    pub from: Option<PathBuf>,
    /// Percentile of the range (e.g. 99.99); 100 is the plain min and max.
    pub percentile: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { prompts: 2, steps: 4, width: None, height: None, from: None, percentile: 99.99 }
    }
}

/// The manifest written next to the converted pipeline: enough to know how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub dfast_version: String,
    /// The ONNX Runtime version dfast targets (the graphs use its contrib ops).
    pub onnxruntime_version: String,
    pub source: String,
    pub profile: String,
    pub profile_source: String,
    pub passes: Vec<String>,
    pub precision: Precision,
    pub execution_provider: ExecutionProvider,
    /// Options for the execution provider's sessions when this folder runs (the profile's `[session.<ep>]`).
    pub session_options: BTreeMap<String, String>,
    pub model_card: Option<String>,
    /// The exclude list the int8-dynamic pass applied (from its recorded settings), when it ran.
    pub int8_exclude: Option<Vec<(usize, usize)>>,
    /// How int8-static was calibrated, when the profile has it.
    pub calibration: Option<Calibration>,
    pub components: Vec<ComponentReport>,
    pub seconds: f64,
    /// Everything that decides the converted files (not the session options): equal keys, equal files.
    pub conversion_key: serde_json::Value,
    /// The LoRA files merged into the weights (`convert --lora`), in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRecord>,
    /// The conversion whose files this folder links (`dfast bench` relabels instead of converting again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relabelled_from: Option<String>,
}

impl Manifest {
    /// The manifest of the converted folder `dir`; `None` when `dir` is no conversion.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "cannot read", e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::parse_file(&path, "not a dfast manifest (written by another dfast version?)", e))
    }

    /// Writes the manifest into `dir` (replacing a hard link to another conversion's manifest, not its target).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::internal(format!("manifest as JSON: {e}")))?;
        let path = dir.join(MANIFEST);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, "cannot write", e))
    }

    /// The session options this folder runs with on its execution provider.
    pub fn ep_options(&self) -> EpOptions {
        EpOptions(self.session_options.clone())
    }

    /// A warning when this folder's int8 weights have 8 bits and `ep` runs them on a `cpu` without VNNI
    /// (AVX2 only: AMD Zen 2 and 3, Intel before Cascade Lake). There the int8 kernels of ONNX Runtime's CPU
    /// EP and of OpenVINO's CPU plugin add pairs of u8 x s8 products into a saturating int16 (`vpmaddubsw`),
    /// which 8-bit weights overflow (2 x 255 x 127 > 32767) and 7-bit weights (`reduce_range`) do not.
    /// `options` are the session options as merged (an OpenVINO `device` other than CPU is not concerned).
    pub fn int8_saturation_warning(
        &self,
        ep: ExecutionProvider,
        options: &EpOptions,
        cpu: &CpuFeatures,
    ) -> Option<String> {
        let on_cpu = match ep {
            ExecutionProvider::Cpu => true,
            ExecutionProvider::OpenVino => options.get("device").is_none_or(|d| d.eq_ignore_ascii_case("cpu")),
            _ => false,
        };
        if !on_cpu || cpu.int8_dot() {
            return None;
        }
        let eight_bit = |p: &&PassRecord| {
            matches!(p.pass.as_str(), "int8-static" | "int8-dynamic")
                && !p.unchanged()
                && p.settings.get("reduce_range") != Some(&serde_json::Value::Bool(true))
        };
        let (component, pass) =
            self.components.iter().find_map(|c| c.passes.iter().find(eight_bit).map(|p| (&c.component, &p.pass)))?;
        Some(format!(
            "the {component}'s int8 weights have 8 bits ({pass}, profile {}), which the int8 kernels of this CPU \
             (no VNNI) saturate: expect a larger error than int8's; convert with `[{pass}] reduce_range = true` \
             (7-bit weights), or for OpenVINO with the int8-conv profile",
            self.profile
        ))
    }

    /// The settings one pass recorded for one component (`Null` when it has none or did not run there).
    pub fn pass_settings(&self, component: &str, pass: &str) -> serde_json::Value {
        self.components
            .iter()
            .filter(|c| c.component == component)
            .flat_map(|c| &c.passes)
            .find(|p| p.pass == pass)
            .map_or(serde_json::Value::Null, |p| p.settings.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest that cannot be read as text: one sentence naming the file, the I/O error as the source.
    #[test]
    fn read_errors_keep_their_source() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), [0xff, 0xfe, 0x00]).unwrap();
        let err = Manifest::read(dir.path()).unwrap_err();
        assert!(err.source().is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()), "{err:?}");
    }

    /// 8-bit int8 weights are said on a CPU without VNNI, on the CPU EP and OpenVINO's CPU device only;
    /// 7-bit weights, a pass that changed nothing, a CPU with VNNI or another device are not.
    #[test]
    fn eight_bit_int8_weights_are_said_where_the_cpu_saturates_them() {
        let manifest = |settings: serde_json::Value, rounds: usize| -> Manifest {
            serde_json::from_value(serde_json::json!({
                "dfast_version": "0", "onnxruntime_version": "1.24.1", "source": "s", "profile": "int8-mixed",
                "profile_source": "builtin:int8-mixed", "passes": ["int8-static"], "precision": "fp32",
                "execution_provider": "openvino", "session_options": {}, "model_card": null, "int8_exclude": null,
                "calibration": null, "seconds": 0.0, "conversion_key": null,
                "components": [{"component": "unet", "nodes_before": 2, "nodes_after": 3, "precision": "fp32",
                    "seconds": 0.0, "passes": [{"pass": "int8-static", "nodes_before": 2, "nodes_after": 3,
                        "initializers_before": 1, "initializers_after": 2, "rewrites": rounds, "rounds": rounds,
                        "settings": settings}]}]
            }))
            .unwrap()
        };
        let avx2 = CpuFeatures::from_cpuinfo("flags\t\t: fpu sse2 avx avx2 fma\n");
        let vnni = CpuFeatures::from_cpuinfo("flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n");
        let none = EpOptions::default();
        let gpu = EpOptions([("device".to_string(), "GPU".to_string())].into());
        let (ov, cpu, cuda) = (ExecutionProvider::OpenVino, ExecutionProvider::Cpu, ExecutionProvider::Cuda);
        let eight = manifest(serde_json::json!({"ops": ["Conv"], "reduce_range": false}), 1);
        let warning = eight.int8_saturation_warning(ov, &none, &avx2).expect("8-bit weights on AVX2 are said");
        assert!(warning.contains("unet") && warning.contains("reduce_range = true"), "{warning}");
        assert!(eight.int8_saturation_warning(cpu, &none, &avx2).is_some());
        // Manifests from before `reduce_range` recorded 8-bit weights without the key.
        assert!(manifest(serde_json::json!({"ops": ["Conv"]}), 1).int8_saturation_warning(ov, &none, &avx2).is_some());
        assert_eq!(eight.int8_saturation_warning(ov, &none, &vnni), None);
        assert_eq!(eight.int8_saturation_warning(ov, &gpu, &avx2), None);
        assert_eq!(eight.int8_saturation_warning(cuda, &none, &avx2), None);
        let seven = manifest(serde_json::json!({"reduce_range": true}), 1);
        assert_eq!(seven.int8_saturation_warning(ov, &none, &avx2), None);
        assert_eq!(manifest(serde_json::json!({}), 0).int8_saturation_warning(ov, &none, &avx2), None);
    }
}
