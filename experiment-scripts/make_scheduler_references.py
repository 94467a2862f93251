"""Writes tests/data/scheduler_reference.json: diffusers scheduler rollouts that src/scheduler/tests.rs replays.

Run with the fixtures venv (diffusers 0.42.1, torch CPU):
    /work/venv/bin/python experiment-scripts/make_scheduler_references.py [--strength-only]

Each case builds a scheduler the way a diffusers user swaps schedulers, `Class.from_config(base_config, **overrides)`,
and runs the standard denoising loop on a [1, 4, 4, 4] latent with a synthetic "UNet":

    x = scheduler.scale_model_input(latents, t)
    model_output = 0.5 * x + 0.1 * sin(3 * x + i)      (i = step index, all float32 torch ops)
    latents = scheduler.step(model_output, t, latents).prev_sample

The model output depends on the sample and on the step, so multistep history (PNDM, DPM-Solver++) matters.
Recorded per case: the full effective config (`dict(scheduler.config)`), timesteps, init_noise_sigma, the initial
noise's formula index, per step the L2 norm of the model input and of the new latents plus a fixed projection of
the latents, and the full latents at checkpoint steps only, to keep the file small.

`schedule_cases` add timesteps/sigmas (no rollout) for more step counts and spacings, each as base config plus
overrides so that the Rust side resolves the class defaults itself.

Also writes tests/data/scheduler_strength_reference.json: runs that start part-way, as diffusers' img2img and
inpainting pipelines run them. `get_timesteps` gives the begin index for a strength (then `set_begin_index`), the
start is `add_noise(original, noise, timesteps[:1])`, and after every step but the last the latents outside a
fixed mask are the original noised to the next timestep, and after the last step the original itself (the
inpainting blend of 4-channel UNets), so that `add_noise` is checked at every timestep of the run.
`--strength-only` writes that file alone (the rollouts' last digits depend on the CPU's float kernels, so
regenerating them elsewhere changes the file).
"""

import argparse
import json
import math

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

import common  # a sibling module (this script's folder is on sys.path)


def base_config(checkpoint: dict) -> dict:
    """A checkpoint's scheduler config (common.py) without `_diffusers_version`, which `from_config` would carry
    into the recorded configs."""
    return {k: v for k, v in checkpoint.items() if k != "_diffusers_version"}


SD15 = base_config(common.SD15_SCHEDULER)
SDXL = base_config(common.SDXL_SCHEDULER)

VPRED_TRAILING = {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}
ZSNR = {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}

# (name, base config, scheduler class, overrides, num_inference_steps)
CASES = [
    ("sd15_pndm_25", SD15, PNDMScheduler, {}, 25),
    ("sd15_pndm_8", SD15, PNDMScheduler, {}, 8),
    ("sd15_euler_linspace_25", SD15, EulerDiscreteScheduler, {}, 25),
    ("sd15_ddim_25", SD15, DDIMScheduler, {}, 25),
    ("sd15_dpmpp_25", SD15, DPMSolverMultistepScheduler, {}, 25),
    ("sd15_dpmpp_8", SD15, DPMSolverMultistepScheduler, {}, 8),
    ("sd15_ddim_vpred_trailing_25", SD15, DDIMScheduler, VPRED_TRAILING, 25),
    ("sd15_dpmpp_karras_25", SD15, DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 25),
    ("sdxl_euler_25", SDXL, EulerDiscreteScheduler, {}, 25),
    ("sdxl_euler_8", SDXL, EulerDiscreteScheduler, {}, 8),
    ("sdxl_pndm_25", SDXL, PNDMScheduler, {}, 25),
    ("sdxl_ddim_8", SDXL, DDIMScheduler, {}, 8),
    ("sdxl_dpmpp_25", SDXL, DPMSolverMultistepScheduler, {}, 25),
    ("sdxl_ddim_vpred_trailing_8", SDXL, DDIMScheduler, VPRED_TRAILING, 8),
    ("sdxl_dpmpp_karras_25", SDXL, DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 25),
    ("sdxl_dpmpp_karras_8", SDXL, DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 8),
    ("sdxl_euler_karras_25", SDXL, EulerDiscreteScheduler, {"use_karras_sigmas": True}, 25),
    # Beyond the two stock configs: the less common options the Rust schedulers also implement.
    ("sd15_pndm_prk_8", SD15, PNDMScheduler, {"skip_prk_steps": False}, 8),
    ("sd15_ddim_clip_linspace_8", SD15, DDIMScheduler,
     {"clip_sample": True, "set_alpha_to_one": True, "timestep_spacing": "linspace"}, 8),
    ("sd15_ddim_zsnr_8", SD15, DDIMScheduler, ZSNR, 8),
    ("sd15_euler_zsnr_8", SD15, EulerDiscreteScheduler, ZSNR, 8),
    ("sd15_dpmpp_zsnr_8", SD15, DPMSolverMultistepScheduler, ZSNR, 8),
    ("sdxl_euler_vpred_8", SDXL, EulerDiscreteScheduler, {"prediction_type": "v_prediction"}, 8),
    ("sdxl_euler_trailing_sigma_min_8", SDXL, EulerDiscreteScheduler,
     {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"}, 8),
    ("sdxl_euler_log_linear_8", SDXL, EulerDiscreteScheduler, {"interpolation_type": "log_linear"}, 8),
    ("sd15_dpmpp_order3_25", SD15, DPMSolverMultistepScheduler, {"solver_order": 3}, 25),
    ("sd15_dpmpp_heun_8", SD15, DPMSolverMultistepScheduler, {"solver_type": "heun"}, 8),
    ("sdxl_dpmpp_sigma_min_20", SDXL, DPMSolverMultistepScheduler,
     {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True}, 20),
    ("sd15_dpmpp_order1_trailing_8", SD15, DPMSolverMultistepScheduler,
     {"solver_order": 1, "timestep_spacing": "trailing"}, 8),
]

# Schedule-only cases (no rollout): odd step counts and every spacing, built from a base config plus overrides so
# the Rust side also exercises the per-class defaults that `from_config` applies.
SCHEDULE_STEPS = [1, 7, 13, 30]
SCHEDULE_VARIANTS = [
    (PNDMScheduler, {}),
    (PNDMScheduler, {"skip_prk_steps": False}),
    (DDIMScheduler, {}),
    (EulerDiscreteScheduler, {}),
    (EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    (EulerDiscreteScheduler, {"use_exponential_sigmas": True}),
    (DPMSolverMultistepScheduler, {}),
    (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    (DPMSolverMultistepScheduler, {"use_lu_lambdas": True}),
    (DPMSolverMultistepScheduler, {"use_exponential_sigmas": True}),
    (DPMSolverMultistepScheduler, {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}),
    (DPMSolverMultistepScheduler, {"lambda_min_clipped": -5.1}),
]
SCHEDULE_SPACINGS = ["leading", "trailing", "linspace"]

SHAPE = [1, 4, 4, 4]
MODEL_OUTPUT = "0.5 * x + 0.1 * sin(3 * x + i), x = scale_model_input(sample), i = step index, float32"
NUMEL = math.prod(SHAPE)


def checkpoint_steps(n: int) -> list[int]:
    """Steps whose full latents are stored: the multistep warm-up, the middle and the low-order final steps."""
    return sorted({i for i in (0, 1, 2, n // 2, n - 2, n - 1) if 0 <= i < n})


def initial_noise(index: int) -> torch.Tensor:
    """A deterministic stand-in for randn, so the file need not store it (rebuilt in Rust from this formula)."""
    k = np.arange(NUMEL, dtype=np.float64)
    values = 1.5 * np.sin(2.3 * k + 0.7 * (index + 1)) + 0.5 * np.cos(0.9 * k * (index + 1))
    return torch.from_numpy(values.astype(np.float32)).reshape(SHAPE)


def projection_weights() -> torch.Tensor:
    """Fixed weights for a per-step scalar projection of the latents (also rebuilt in Rust from this formula)."""
    k = np.arange(NUMEL, dtype=np.float64)
    return torch.from_numpy(np.cos(0.37 * k + 0.5).astype(np.float32)).reshape(SHAPE)


def fmt(values, digits: int) -> list[float]:
    """Floats rounded to `digits` significant digits: enough for the 1e-5 tests, small on disk."""
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def jsonable_config(config) -> dict:
    out = {}
    for key, value in dict(config).items():
        if key == "_use_default_values":
            continue
        # JSON has no infinities (diffusers itself writes the non-standard `-Infinity`); null means the default.
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def run_case(index: int, name: str, base: dict, cls, overrides: dict, steps: int) -> dict:
    scheduler = cls.from_config(base, **overrides)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    init_noise_sigma = float(scheduler.init_noise_sigma)

    noise = initial_noise(index)
    latents = noise * scheduler.init_noise_sigma
    weights = projection_weights()
    checkpoints = set(checkpoint_steps(len(timesteps)))

    model_input_norms, sample_norms, sample_projections, samples = [], [], [], {}
    for i, t in enumerate(timesteps):
        x = scheduler.scale_model_input(latents, t)
        model_output = 0.5 * x + 0.1 * torch.sin(x * 3 + i)
        latents = scheduler.step(model_output, t, latents).prev_sample
        model_input_norms.append(torch.linalg.vector_norm(x.double()).item())
        sample_norms.append(torch.linalg.vector_norm(latents.double()).item())
        sample_projections.append((latents.double() * weights.double()).sum().item())
        if i in checkpoints:
            samples[str(i)] = fmt(latents.numpy(), 7)

    return {
        "name": name,
        "config": jsonable_config(scheduler.config),
        "num_inference_steps": steps,
        "timesteps": [float(t) for t in timesteps.double().numpy()],
        "init_noise_sigma": init_noise_sigma,
        "shape": SHAPE,
        "noise_index": index,
        "model_input_norms": fmt(model_input_norms, 9),
        "sample_norms": fmt(sample_norms, 9),
        "sample_projections": fmt(sample_projections, 9),
        "samples": samples,
    }


def schedule_cases() -> list[dict]:
    out = []
    for cls, overrides in SCHEDULE_VARIANTS:
        for spacing in SCHEDULE_SPACINGS:
            for steps in SCHEDULE_STEPS:
                if cls is PNDMScheduler and not overrides.get("skip_prk_steps", True) and steps < 4:
                    continue  # diffusers' PRK warm-up needs at least 4 steps
                full = {**overrides, "timestep_spacing": spacing}
                scheduler = cls.from_config(SD15, **full)
                scheduler.set_timesteps(steps)
                case = {
                    "class": cls.__name__,
                    "base": "sd15",
                    "overrides": full,
                    "num_inference_steps": steps,
                    "timesteps": [float(t) for t in scheduler.timesteps.double().numpy()],
                    "init_noise_sigma": float(scheduler.init_noise_sigma),
                }
                if hasattr(scheduler, "sigmas") and isinstance(scheduler.sigmas, torch.Tensor):
                    case["sigmas"] = fmt(scheduler.sigmas.numpy(), 7)
                out.append(case)
    return out


# (name, base config, scheduler class, overrides, num_inference_steps, strength)
STRENGTH_CASES = [
    ("sd15_pndm_10_0.6", SD15, PNDMScheduler, {}, 10, 0.6),
    ("sd15_pndm_10_1.0", SD15, PNDMScheduler, {}, 10, 1.0),
    ("sd15_pndm_prk_10_0.7", SD15, PNDMScheduler, {"skip_prk_steps": False}, 10, 0.7),
    ("sd15_ddim_10_0.8", SD15, DDIMScheduler, {}, 10, 0.8),
    ("sd15_ddim_vpred_trailing_8_0.75", SD15, DDIMScheduler, VPRED_TRAILING, 8, 0.75),
    ("sd15_euler_10_0.5", SD15, EulerDiscreteScheduler, {}, 10, 0.5),
    ("sdxl_euler_10_0.3", SDXL, EulerDiscreteScheduler, {}, 10, 0.3),
    ("sdxl_euler_karras_12_0.9999", SDXL, EulerDiscreteScheduler, {"use_karras_sigmas": True}, 12, 0.9999),
    ("sd15_dpmpp_10_0.6", SD15, DPMSolverMultistepScheduler, {}, 10, 0.6),
    ("sdxl_dpmpp_karras_12_1.0", SDXL, DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 12, 1.0),
    ("sd15_dpmpp_order3_20_0.55", SD15, DPMSolverMultistepScheduler, {"solver_order": 3}, 20, 0.55),
]


def blend_mask() -> torch.Tensor:
    """The inpainting mask of the strength runs: 1 (denoised) where the flat index is not a multiple of 3."""
    k = np.arange(NUMEL)
    return torch.from_numpy((k % 3 != 0).astype(np.float32)).reshape(SHAPE)


def run_strength_case(index: int, name: str, base: dict, cls, overrides: dict, steps: int, strength: float) -> dict:
    scheduler = cls.from_config(base, **overrides)
    scheduler.set_timesteps(steps)
    # diffusers' get_timesteps (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline)
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)

    original, noise, mask = initial_noise(index), initial_noise(index + 100), blend_mask()
    latents = scheduler.add_noise(original, noise, timesteps[:1])
    start = latents.clone()
    sample_norms = []
    for i, t in enumerate(timesteps):
        x = scheduler.scale_model_input(latents, t)
        model_output = 0.5 * x + 0.1 * torch.sin(x * 3 + i)
        latents = scheduler.step(model_output, t, latents).prev_sample
        proper = original  # as StableDiffusionInpaintPipeline's loop: clean after the last step
        if i < len(timesteps) - 1:
            proper = scheduler.add_noise(original, noise, torch.tensor([timesteps[i + 1]]))
        latents = (1 - mask) * proper + mask * latents
        sample_norms.append(torch.linalg.vector_norm(latents.double()).item())
    return {
        "name": name,
        "config": jsonable_config(scheduler.config),
        "num_inference_steps": steps,
        "strength": strength,
        "begin_index": t_start * scheduler.order,
        "timesteps": [float(t) for t in timesteps.double().numpy()],
        "original_index": index,
        "noise_index": index + 100,
        "start": fmt(start.numpy(), 8),
        "sample_norms": fmt(sample_norms, 9),
        "final": fmt(latents.numpy(), 8),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strength-only", action="store_true", help="write scheduler_strength_reference.json only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.strength_only:
        write_rollouts()
    write_strength()


def write_rollouts() -> None:
    cases = [run_case(i, *case) for i, case in enumerate(CASES)]
    reference = {
        "generator": "experiment-scripts/make_scheduler_references.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "model_output": MODEL_OUTPUT,
        "projection_weights": "cos(0.37 * k + 0.5) for flat index k, computed in float64, stored as float32",
        "initial_noise": "1.5 * sin(2.3 * k + 0.7 * (noise_index + 1)) + 0.5 * cos(0.9 * k * (noise_index + 1)), "
        "float64 rounded to float32, latents = noise * init_noise_sigma",
        "base_configs": {"sd15": SD15, "sdxl": SDXL},
        "cases": cases,
        "schedule_cases": schedule_cases(),
    }
    out = common.ROOT / "tests" / "data" / "scheduler_reference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reference, separators=(",", ":"), allow_nan=False) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {len(cases)} rollouts, "
          f"{len(reference['schedule_cases'])} schedules)")


def write_strength() -> None:
    strength = {
        "generator": "experiment-scripts/make_scheduler_references.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "model_output": MODEL_OUTPUT,
        "original": "initial_noise(original_index), noise: initial_noise(noise_index) (the formula above)",
        "mask": "1 where the flat index k is not a multiple of 3, else 0 (those values are the noised original)",
        "cases": [run_strength_case(i, *case) for i, case in enumerate(STRENGTH_CASES)],
    }
    out = common.ROOT / "tests" / "data" / "scheduler_strength_reference.json"
    out.write_text(json.dumps(strength, separators=(",", ":"), allow_nan=False) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {len(strength['cases'])} runs from a strength)")


if __name__ == "__main__":
    main()
