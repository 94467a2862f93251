"""Writes tests/data/scheduler_reference.json: diffusers scheduler rollouts that src/scheduler/tests.rs replays.

Run with the fixtures venv (diffusers 0.42.1, torch CPU):
    /work/venv/bin/python experiment-scripts/make_scheduler_references.py

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
"""

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


def main() -> None:
    torch.set_num_threads(1)
    cases = [run_case(i, *case) for i, case in enumerate(CASES)]
    reference = {
        "generator": "experiment-scripts/make_scheduler_references.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "model_output": "0.5 * x + 0.1 * sin(3 * x + i), x = scale_model_input(sample), i = step index, float32",
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


if __name__ == "__main__":
    main()
