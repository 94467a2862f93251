# Type stubs of the extension module (python/src/lib.rs); dfast/__init__.py is the API people use.
from collections.abc import Sequence
from typing import Any

ORT_VERSION: str
ORT_OPENVINO_VERSION: str
DEFAULT_BENCH_PROMPT: str

class DfastError(ValueError): ...

class Pipeline:
    def __init__(
        self,
        model: str,
        ep: str,
        ep_options: dict[str, str] | None = None,
        ort_lib: str | None = None,
        revision: str | None = None,
        subfolder: str | None = None,
    ) -> None: ...
    @property
    def model_dir(self) -> str: ...
    @property
    def ep(self) -> str: ...
    @property
    def ort_library(self) -> str: ...
    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        width: int | None = None,
        height: int | None = None,
        batch_size: int = 1,
        latents: str | None = None,
        image: str | None = None,
        mask: str | None = None,
        strength: float | None = None,
        scheduler: str | None = None,
        no_resolution_binning: bool = False,
    ) -> dict[str, Any]: ...

def save_rgb(path: str, data: bytes, width: int, height: int) -> None: ...
def convert(
    model: str,
    out: str,
    profile: str,
    precision: str | None = None,
    ep: str = "cpu",
    force: bool = False,
    card: str | None = None,
    vae_half: bool = False,
    ort_lib: str | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
    loras: Sequence[tuple[str, float]] = ...,
) -> tuple[str, list[str]]: ...
def report(folders: Sequence[str], out: str, title: str = ...) -> dict[str, Any]: ...
def bench(
    model: str,
    out: str,
    worker: tuple[str, list[str]],
    profiles: list[str],
    precisions: list[str],
    eps: list[str],
    steps: int | None = None,
    batch_size: int = 1,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    warmup: int = 3,
    runs: int = 5,
    prompt: str | None = None,
    tag: str = "",
    append: bool = False,
    ep_options: dict[str, str] | None = None,
    ort_lib: str | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
) -> list[str]: ...
def answer_job(job: str, answer: str) -> None: ...
def set_log_verbosity(verbosity: int) -> None: ...
