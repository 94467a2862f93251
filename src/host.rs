//! The machine at hand: its CPU (name, and the instructions that decide precisions), its GPU's name, the
//! memory this process holds, and the median that every timing here reports.

use std::process::Command;

/// What a CPU reports that decides precisions: native bf16 and int8 dot-product instructions, and the
/// AVX-512 and AVX2 extensions OpenVINO's CPU plugin needs before it computes in bf16 or f16 at all
/// (`runtime::openvino_cpu_precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuFeatures {
    pub avx512_bf16: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    pub avx512_vnni: bool,
    pub avx_vnni: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512dq: bool,
    pub avx512_fp16: bool,
    pub avx_vnni_int8: bool,
    pub avx_ne_convert: bool,
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
            avx512f: has("avx512f"),
            avx512bw: has("avx512bw"),
            avx512vl: has("avx512vl"),
            avx512dq: has("avx512dq"),
            avx512_fp16: has("avx512_fp16"),
            avx_vnni_int8: has("avx_vnni_int8"),
            avx_ne_convert: has("avx_ne_convert"),
        }
    }

    /// This machine's (none where `/proc/cpuinfo` cannot be read).
    pub fn host() -> Self {
        let mut cpu = std::fs::read_to_string("/proc/cpuinfo").map(|t| Self::from_cpuinfo(&t)).unwrap_or_default();
        // Linux keeps CPUID leaf 7.1 EDX (AVX-VNNI-INT8, AVX-NE-CONVERT) for KVM and may not list it in
        // /proc/cpuinfo: ask the CPU, where the kernel lists AVX-VNNI (so the OS keeps AVX state).
        #[cfg(target_arch = "x86_64")]
        if cpu.avx_vnni {
            let (int8, ne_convert) = leaf7_1_edx();
            cpu.avx_vnni_int8 |= int8;
            cpu.avx_ne_convert |= ne_convert;
        }
        cpu
    }

    /// bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16).
    pub fn native_bf16(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }

    /// int8 dot products in hardware (VNNI or AMX-INT8).
    pub fn int8_dot(&self) -> bool {
        self.avx512_vnni || self.avx_vnni || self.amx_int8
    }

    /// oneDNN's `avx512_core`: AVX-512 F, BW, VL and DQ (Skylake-SP and later Xeons, AMD Zen 4 and later).
    pub fn avx512_core(&self) -> bool {
        self.avx512f && self.avx512bw && self.avx512vl && self.avx512dq
    }

    /// oneDNN's `avx2_vnni_2`: AVX-VNNI with AVX-VNNI-INT8 and AVX-NE-CONVERT (bf16/f16 conversions on AVX2:
    /// Intel Sierra Forest, Arrow Lake, Lunar Lake).
    pub fn avx2_vnni_2(&self) -> bool {
        self.avx_vnni && self.avx_vnni_int8 && self.avx_ne_convert
    }

    /// The flags that are set, by their `/proc/cpuinfo` names.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("avx512_bf16", self.avx512_bf16),
            ("amx_bf16", self.amx_bf16),
            ("amx_int8", self.amx_int8),
            ("avx512_vnni", self.avx512_vnni),
            ("avx_vnni", self.avx_vnni),
            ("avx512f", self.avx512f),
            ("avx512bw", self.avx512bw),
            ("avx512vl", self.avx512vl),
            ("avx512dq", self.avx512dq),
            ("avx512_fp16", self.avx512_fp16),
            ("avx_vnni_int8", self.avx_vnni_int8),
            ("avx_ne_convert", self.avx_ne_convert),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n)
        .collect()
    }
}

/// AVX-VNNI-INT8 and AVX-NE-CONVERT from CPUID leaf 7, sub-leaf 1, EDX bits 4 and 5.
#[cfg(target_arch = "x86_64")]
fn leaf7_1_edx() -> (bool, bool) {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // CPUID is on every x86-64 CPU; leaf 7 and its sub-leaf 1 are asked for only where the CPU has them.
    #[allow(unused_unsafe)]
    let edx = unsafe { if __cpuid(0).eax < 7 || __cpuid_count(7, 0).eax < 1 { 0 } else { __cpuid_count(7, 1).edx } };
    (edx & (1 << 4) != 0, edx & (1 << 5) != 0)
}

/// The median; 0 for no values.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The first GPU's name, from nvidia-smi.
pub fn gpu_name() -> Option<String> {
    let out = Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

/// GPU memory held by this process, from nvidia-smi (MiB).
pub fn gpu_memory_of_this_process_mb() -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (p, mb) = l.split_once(',')?;
        (p.trim() == pid).then(|| mb.trim().parse().ok()).flatten()
    })
}

/// The first GPU's memory, from nvidia-smi (bytes).
pub fn gpu_memory_total() -> Option<u64> {
    let out =
        Command::new("nvidia-smi").args(["--query-gpu=memory.total", "--format=csv,noheader,nounits"]).output().ok()?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()?;
    Some(mib << 20)
}

/// Host memory this process can still take (bytes), and what bounds it: the machine's available memory
/// (`MemAvailable`), the control group's limit less its use, or the address-space limit (`RLIMIT_AS`) less
/// what the process maps already, whichever is least. `None` where none can be read (not Linux).
pub fn memory_available() -> Option<(u64, &'static str)> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let kb_field = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line[key.len()..].split_whitespace().next()?.parse::<u64>().ok()? * 1024)
    };
    let mut bounds: Vec<(u64, &'static str)> = Vec::new();
    if let Some(free) = read("/proc/meminfo").and_then(|t| kb_field(&t, "MemAvailable:")) {
        bounds.push((free, "the memory available on this machine"));
    }
    let cgroup = |name: &str| read(&format!("/sys/fs/cgroup/{name}")).and_then(|t| t.trim().parse::<u64>().ok());
    if let (Some(max), Some(used)) = (cgroup("memory.max"), cgroup("memory.current")) {
        bounds.push((max.saturating_sub(used), "the memory this control group may still use"));
    }
    let limit = read("/proc/self/limits").and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("Max address space"))?;
        line["Max address space".len()..].split_whitespace().next()?.parse::<u64>().ok()
    });
    if let Some(limit) = limit {
        let mapped = read("/proc/self/status").and_then(|t| kb_field(&t, "VmSize:")).unwrap_or(0);
        bounds.push((limit.saturating_sub(mapped), "the address space left under this process's RLIMIT_AS limit"));
    }
    bounds.into_iter().min_by_key(|(bytes, _)| *bytes)
}

/// Peak resident memory of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The CPU's model name.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Excerpts of `/proc/cpuinfo`: the 2-core Xeon (AVX-512 VNNI, no bf16) and the AMD EPYC Zen 4
    /// (AVX512-BF16) that the CPU benchmarks ran on, a Sapphire Rapids with AMX, the AMD EPYC Zen 2 of the
    /// development machine (AVX2 and FMA only), and an AVX2 CPU with AVX-VNNI-INT8 and AVX-NE-CONVERT
    /// (Arrow Lake; no AVX-512).
    pub(crate) const XEON: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\n\
        flags\t\t: fpu vme de pse tsc msr avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni\n\
        bugs\t\t: spectre_v1\n";
    pub(crate) const EPYC: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n\
        flags\t\t: fpu avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi \
        avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg\n";
    pub(crate) const SPR: &str = "flags\t\t: fpu avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni avx512_bf16 \
        avx512_vnni avx512_fp16 amx_bf16 amx_tile amx_int8\n";
    pub(crate) const ZEN2: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
        flags\t\t: fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c bmi1 avx2 smep bmi2 sha_ni clzero\n";
    pub(crate) const ARROW_LAKE: &str = "flags\t\t: fpu avx f16c fma avx2 avx_vnni avx_vnni_int8 avx_ne_convert\n";

    #[test]
    fn cpu_flags_are_read_from_cpuinfo_text() {
        let xeon = CpuFeatures::from_cpuinfo(XEON);
        assert!(!xeon.native_bf16() && xeon.int8_dot(), "{xeon:?}");
        assert_eq!(xeon.names(), ["avx512_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq"]);
        let epyc = CpuFeatures::from_cpuinfo(EPYC);
        assert!(epyc.native_bf16() && epyc.avx512_vnni && !epyc.amx_bf16, "{epyc:?}");
        let spr = CpuFeatures::from_cpuinfo(SPR);
        assert!(spr.amx_bf16 && spr.amx_int8 && spr.avx_vnni && spr.native_bf16());
        let zen2 = CpuFeatures::from_cpuinfo(ZEN2);
        assert!(!zen2.int8_dot() && !zen2.native_bf16() && !zen2.avx512_core() && !zen2.avx2_vnni_2(), "{zen2:?}");
        assert!(CpuFeatures::from_cpuinfo(XEON).avx512_core() && epyc.avx512_core() && spr.avx512_core());
        let arrow = CpuFeatures::from_cpuinfo(ARROW_LAKE);
        assert!(arrow.avx2_vnni_2() && !arrow.avx512_core() && !arrow.native_bf16(), "{arrow:?}");
        // AVX-512 F alone is not oneDNN's avx512_core (F, BW, VL and DQ).
        assert!(!CpuFeatures::from_cpuinfo("flags\t: avx2 avx512f avx512dq\n").avx512_core());
        // A flag name that merely contains another is not it; no flags line: nothing.
        assert!(!CpuFeatures::from_cpuinfo("flags\t: avx512_bf16x amx_bf16_extra\n").native_bf16());
        assert_eq!(CpuFeatures::from_cpuinfo("Features\t: fp asimd\n"), CpuFeatures::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
