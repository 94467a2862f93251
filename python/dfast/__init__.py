"""dfast: fast text-to-image diffusion on ONNX Runtime, with diffusers' names.

    import dfast
    pipe = dfast.Pipeline("models/tiny-sd")            # a pipeline folder or a Hugging Face repo id
    out = pipe("a castle", seed=1, num_inference_steps=20)
    out.images[0].save("castle.png")                   # PIL images (numpy uint8 HxWx3 without Pillow)

ONNX Runtime comes from the `onnxruntime`, `onnxruntime-gpu` or `onnxruntime-openvino` package installed in
this environment (`pip install dfast[cpu]`, `[gpu]` or `[openvino]`, one of them); `ort_lib=` or
`ORT_DYLIB_PATH` names another library, and wins. One process loads one ONNX Runtime library.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _dfast
from ._dfast import DfastError

__all__ = ["DfastError", "Pipeline", "PipelineOutput", "bench", "convert", "ort_library", "report"]

ORT_VERSION = _dfast.ORT_VERSION

_GPU_EPS = ("cuda", "tensorrt")


def ort_library(ep: str = "cpu", ort_lib: str | os.PathLike | None = None) -> str | None:
    """The ONNX Runtime library dfast loads for `ep`: `ort_lib`, else None where `ORT_DYLIB_PATH` is set (the
    library reads it), else the shared library of the `onnxruntime*` package in this environment.

    For the CUDA and TensorRT EPs the package's CUDA libraries are loaded first (`onnxruntime.preload_dlls()`).
    """
    if ort_lib is not None:
        return os.fspath(ort_lib)
    if os.environ.get("ORT_DYLIB_PATH"):
        return None
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise DfastError(
            "ONNX Runtime not found: install it in this environment (pip install onnxruntime, onnxruntime-gpu "
            "or onnxruntime-openvino; or the extra dfast[cpu], dfast[gpu] or dfast[openvino]), or point "
            "ORT_DYLIB_PATH or ort_lib= at a libonnxruntime.so"
        )
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    libs = sorted(p for p in capi.glob("libonnxruntime.so*") if p.is_file())
    if not libs:
        raise DfastError(
            f"{capi}: the onnxruntime package here has no libonnxruntime.so; expected the wheel of onnxruntime, "
            "onnxruntime-gpu or onnxruntime-openvino"
        )
    if ep in _GPU_EPS:
        import onnxruntime

        preload = getattr(onnxruntime, "preload_dlls", None)
        if preload is not None:
            preload()
    return os.fspath(libs[-1])


@dataclass
class PipelineOutput:
    """What a pipeline call returns, as diffusers' output: `images`, plus `latents` and `timings`."""

    #: PIL images if Pillow is installed, else numpy uint8 arrays (height, width, 3).
    images: list
    #: The final latents (before VAE scaling), float32, (images, channels, height / 8, width / 8).
    latents: np.ndarray
    #: Seconds: text_encoding, unet_steps (a list), host_scheduler and host_copies (per step), vae_encode,
    #: vae_decode, total; started_at and finished_at are the run's wall-clock span (as time.time()).
    timings: dict[str, Any]
    #: What the run used: width, height, steps, guidance, scheduler, strength, seed.
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _to_image(data: bytes, width: int, height: int):
    array = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    try:
        from PIL import Image
    except ImportError:
        return array.copy()
    return Image.fromarray(array, "RGB")


def _write_image(value, folder: str, name: str) -> str | None:
    """`image=` / `mask_image=` as a file the library reads: a path as it is, a PIL image or a numpy array
    (uint8, HxWx3 or HxW) written as a lossless PNG."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    path = os.path.join(folder, name)
    if hasattr(value, "save") and hasattr(value, "mode"):
        value.save(path, format="PNG")
        return path
    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise DfastError(
            f"{name.split('.')[0]}: expected a path, a PIL image or a uint8 array of shape (height, width, 3) or "
            f"(height, width); got {array.dtype} {array.shape}"
        )
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    array = np.ascontiguousarray(array)
    _dfast.save_rgb(path, array.tobytes(), array.shape[1], array.shape[0])
    return path


def _write_latents(value, folder: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    path = os.path.join(folder, "latents.npy")
    np.save(path, np.ascontiguousarray(np.asarray(value, dtype=np.float32)))
    return path


class Pipeline:
    """A loaded pipeline, reusable for many images (`dfast generate`'s, with diffusers' argument names).

    `model` is a pipeline folder (diffusers' ONNX layout, or one `dfast convert` wrote) or a Hugging Face repo id
    (from the cache, else downloaded into it; `revision=` and `subfolder=` as `--revision`, `--subfolder`).
    `ep` is cpu, cuda, tensorrt or openvino; `ep_options` as `--ep-option key=value`.

    Calls release the interpreter's lock: pipelines in several threads run at once (one pipeline runs one
    call at a time).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        ep: str = "cpu",
        ep_options: dict[str, Any] | None = None,
        *,
        ort_lib: str | os.PathLike | None = None,
        revision: str | None = None,
        subfolder: str | None = None,
    ):
        options = {str(k): _option_text(v) for k, v in (ep_options or {}).items()}
        self._pipe = _dfast.Pipeline(
            os.fspath(model), ep, options, ort_library(ep, ort_lib), revision=revision, subfolder=subfolder
        )

    @property
    def model_dir(self) -> Path:
        return Path(self._pipe.model_dir)

    @property
    def ep(self) -> str:
        return self._pipe.ep

    @property
    def ort_library(self) -> Path:
        return Path(self._pipe.ort_library)

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        width: int | None = None,
        height: int | None = None,
        num_images_per_prompt: int = 1,
        latents=None,
        image=None,
        mask_image=None,
        strength: float | None = None,
        *,
        scheduler: str | None = None,
        use_resolution_binning: bool = True,
    ) -> PipelineOutput:
        """Generates `num_images_per_prompt` images. None takes `dfast generate`'s default (the pipeline's own
        steps, guidance and size; img2img's strength per pipeline class). `latents` (numpy or a .npy path)
        replaces the noise drawn from `seed`; `image` (a path, a PIL image or uint8 HxWx3) starts img2img, and
        with `mask_image` (white where repainted) inpainting. `scheduler` (euler, ddim, pndm, dpm++, euler-a,
        lcm) replaces the pipeline's own class; PixArt's `use_resolution_binning` as diffusers'."""
        with tempfile.TemporaryDirectory(prefix="dfast-") as folder:
            out = self._pipe.generate(
                prompt,
                negative_prompt=negative_prompt,
                steps=num_inference_steps,
                guidance=guidance_scale,
                seed=seed,
                width=width,
                height=height,
                batch_size=num_images_per_prompt,
                latents=_write_latents(latents, folder),
                image=_write_image(image, folder, "image.png"),
                mask=_write_image(mask_image, folder, "mask_image.png"),
                strength=strength,
                scheduler=scheduler,
                no_resolution_binning=not use_resolution_binning,
            )
        for warning in out["warnings"]:
            warnings.warn(warning, stacklevel=2)
        latents_out = np.frombuffer(out["latents"], dtype="<f4").reshape(out["latents_shape"]).copy()
        config = {k: out[k] for k in ("width", "height", "steps", "guidance", "scheduler", "strength")}
        config["seed"] = seed
        return PipelineOutput(
            images=[_to_image(*image) for image in out["images"]],
            latents=latents_out,
            timings=out["timings"],
            config=config,
            warnings=list(out["warnings"]),
        )


def _option_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def convert(
    model: str | os.PathLike,
    out: str | os.PathLike,
    profile: str,
    precision: str | None = None,
    ep: str = "cpu",
    *,
    force: bool = False,
    card: str | None = None,
    vae_half: bool = False,
    ort_lib: str | os.PathLike | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
    lora: Sequence[str | os.PathLike | tuple[str | os.PathLike, float]] = (),
) -> dict[str, Any]:
    """Rewrites a pipeline for one execution provider and precision (`dfast convert`); returns the manifest
    (dfast-manifest.json) as a dict. `ort_lib` is used by int8-static calibration (the CPU build). `lora`:
    LoRA files merged into the weights first (`--lora`), each a path (scale 1) or a (path, scale) pair."""
    loras = [(os.fspath(f[0]), float(f[1])) if isinstance(f, tuple) else (os.fspath(f), 1.0) for f in lora]
    lib = ort_library("cpu", ort_lib) if profile == "int8-static" or ort_lib is not None else None
    manifest, notes = _dfast.convert(
        os.fspath(model),
        os.fspath(out),
        profile,
        precision=precision,
        ep=ep,
        force=force,
        card=card,
        vae_half=vae_half,
        ort_lib=lib,
        revision=revision,
        subfolder=subfolder,
        loras=loras,
    )
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return json.loads(manifest)


def report(
    folders: list[str | os.PathLike], out: str | os.PathLike, title: str = "dfast benchmark: total seconds per setting"
) -> dict[str, Any]:
    """Collates benchmark result folders into results.csv, report.md and report.png in `out` (`dfast
    report`); returns rows, models, files and warnings."""
    summary = _dfast.report([os.fspath(f) for f in folders], os.fspath(out), title)
    summary["files"] = [Path(f) for f in summary["files"]]
    return summary


def bench(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    profiles: list[str] | None = None,
    precisions: list[str] | None = None,
    eps: list[str] | None = None,
    num_inference_steps: int | None = None,
    num_images_per_prompt: int = 1,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    warmup: int = 3,
    runs: int = 5,
    prompt: str | None = None,
    tag: str = "",
    append: bool = False,
    ep_options: dict[str, Any] | None = None,
    ort_lib: str | os.PathLike | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
) -> list[dict[str, Any]]:
    """Benchmarks profiles x precisions x execution providers (`dfast bench`): one row per combination, as a
    dict with results.csv's columns (also written to `out`, with one image per row). Each combination runs in
    a process of its own (this interpreter, `-m dfast._worker`). Skipped combinations are warnings."""
    eps = list(eps or ["cpu"])
    lib = ort_library(eps[0], ort_lib)
    options = {str(k): _option_text(v) for k, v in (ep_options or {}).items()}
    rows = _dfast.bench(
        os.fspath(model),
        os.fspath(out),
        (sys.executable, ["-m", "dfast._worker"]),
        list(profiles or []),
        list(precisions or []),
        eps,
        steps=num_inference_steps,
        batch_size=num_images_per_prompt,
        width=width,
        height=height,
        scheduler=scheduler,
        warmup=warmup,
        runs=runs,
        prompt=prompt,
        tag=tag,
        append=append,
        ep_options=options,
        ort_lib=lib,
        revision=revision,
        subfolder=subfolder,
    )
    return [json.loads(row) for row in rows]
