"""What the Ray scripts share: connecting to (or starting) Ray, the prompt-file rule of `dfast generate
--prompt-file`, atomic writes and the node a task runs on. Imported by ray_generate.py, ray_bench.py and
ray_serve.py; shipped to the workers by value (`ship`), so that a node needs dfast, not this checkout."""

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost")

# Read when Ray is imported. No usage statistics; each worker line as it comes (Ray's deduplication holds back
# lines that differ only in numbers, such as "line 3: started").
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


class BadInput(Exception):
    """One sentence for the user: which file or flag, what was expected."""


def main(parse_args, run, argv=None):
    """A script's entry point: `run(parse_args(argv))` returns the failures to name; bad input is one sentence
    and exit 2, failures exit 1."""
    args = parse_args(argv)
    try:
        failures = run(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def add_ray_flags(parser):
    parser.add_argument(
        "--address",
        help="a running Ray cluster (`auto`, or HOST:PORT of its head); default: start a local Ray on 127.0.0.1",
    )
    parser.add_argument(
        "--object-store-mb",
        type=positive_int,
        default=256,
        help="object store of the local Ray this starts (default 256 MB; ignored with --address)",
    )


def init_ray(address, object_store_mb=256, num_cpus=None):
    """`ray.init` on 127.0.0.1: a local Ray binds there explicitly (Ray otherwise picks a private-range
    address), its object store capped; a cluster on the loopback is joined from there too. Ray is imported
    here, so that `--help` and bad flags answer at once."""
    import ray
    import ray._private.ray_constants

    ship(sys.modules[__name__])
    host = None if address is None else address.removeprefix("ray://").rsplit(":", 1)[0]
    if host is None or host in LOOPBACK:
        # Ray rewrites a loopback address into this machine's outward address before it connects (and a
        # driver looks for its node there); its single-machine mode keeps 127.0.0.1. The constant is what
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets at import; `serve run` on 127.0.0.1 needs that variable.
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    if address is None:
        return ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            object_store_memory=object_store_mb * 1024 * 1024,
            num_cpus=num_cpus,
            log_to_driver=True,
        )
    kwargs = {"_node_ip_address": "127.0.0.1"} if host in LOOPBACK else {}
    return ray.init(address=address, log_to_driver=True, **kwargs)


def ship(module):
    """Workers get `module` by value, so they need not have it on their path."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(module)


def positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, found {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, found {text!r}")
    return value


def seed_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2^64-1, found {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2^64-1, found {text!r}")
    return value


# -- the prompt file, as `dfast generate --prompt-file` reads it (src/pipeline/prompt_file.rs) -----------------

PROMPT_FIELDS = {"prompt": str, "negative_prompt": str, "seed": int, "width": int, "height": int, "steps": int}


@dataclass
class PromptJob:
    """One prompt: `index` counts prompts from 0 (the seed rule's i), `line` counts the file's lines from 1."""

    index: int
    line: int
    prompt: str = ""
    settings: dict = field(default_factory=dict)
    error: str = ""


def read_prompt_file(path):
    """The prompts of `path` in order. Empty lines and `#` comments are skipped and a byte order mark is
    dropped, as `generate` does; a line that does not parse is kept as a job with its error (the batch
    reports it and goes on with the others), and keeps its place in the seed count."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"{path}: cannot read the prompt file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text; expected one prompt per line") from None
    text = text.removeprefix("\ufeff")
    jobs = []
    # Lines as Rust's str::lines splits them (on \n, a \r before it dropped), so that numbers match generate's.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        job = PromptJob(index=len(jobs), line=number)
        if line.startswith("{"):
            job.prompt, job.settings, job.error = parse_json_line(line)
        elif line.startswith("["):
            job.error = "a JSON array; expected one JSON object (or plain prompt text) per line"
        else:
            job.prompt = line
        jobs.append(job)
    if not jobs:
        raise BadInput(f"{path}: holds no prompt (one per line, or JSON objects with a `prompt`)")
    return jobs


def parse_json_line(line):
    """(prompt, settings, error) of one JSON line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return "", {}, f"not a prompt object: {e}"
    if not isinstance(obj, dict):
        return "", {}, "not a prompt object"
    unknown = sorted(set(obj) - set(PROMPT_FIELDS))
    if unknown:
        return "", {}, f"not a prompt object: unknown field `{unknown[0]}`, expected one of {', '.join(PROMPT_FIELDS)}"
    if not isinstance(obj.get("prompt"), str):
        return "", {}, "not a prompt object: `prompt` (text) is missing"
    for key, kind in PROMPT_FIELDS.items():
        value = obj.get(key)
        if value is None:
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return "", {}, f"`{key}` must be a whole number, found {json.dumps(value)}"
        if kind is str and not isinstance(value, str):
            return "", {}, f"`{key}` must be text, found {json.dumps(value)}"
        if key in ("width", "height", "steps") and value == 0:
            return "", {}, f"`{key}` must be positive"
    settings = {k: v for k, v in obj.items() if k != "prompt" and v is not None}
    return obj["prompt"], settings, ""


def model_path(model):
    """A pipeline folder that exists here as an absolute path (a worker's working folder is not the driver's);
    anything else (a repo id, a folder only the workers have) as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


# -- files -------------------------------------------------------------------------------------------------------


def write_atomic(path, data):
    """Writes `data` (bytes) to a hidden temporary file beside `path`, then renames it over `path`: a reader (or
    a rerun) sees the whole file or none."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder):
    """The temporary files a killed writer left behind (never a finished file)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# -- the node a task runs on ---------------------------------------------------------------------------------------


def node_info():
    """The Ray node id, hostname, CPU and GPU (empty without nvidia-smi) of the process calling it."""
    import ray

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "node_cpu": cpu_name(),
        "node_gpu": gpu_names(),
    }


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names():
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ""
    try:
        query = [smi, "--query-gpu=name", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip())
