#!/usr/bin/env python3
"""The GPU-versus-CPU comparison across machines: each entry of a matrix runs `dfast.bench` on a Ray node that
matches its selector; all rows are gathered into one results.csv (each with the node's id, hostname, CPU and
GPU), then one report and one chart.

    python experiment-scripts/ray_bench.py --matrix experiment-scripts/ray_matrix.toml --out results/matrix \\
        [--address HOST:PORT]

The matrix (TOML):

    [defaults]                       # optional: keys every entry takes unless it sets them
    steps = 20

    [[entry]]
    name = "h100"                    # names the entry's rows (their `tag` unless it sets one) and images
    resources = { gpu_h100 = 1 }     # the node selector: Ray custom resources a node must offer ...
    # labels = { "ray.io/accelerator-type" = "H100" }   # ... or Ray node labels it must carry
    model = "/data/sd15-onnx"        # a pipeline folder on that node, or a Hugging Face repo id
    eps = ["cuda", "tensorrt"]
    profiles = ["baseline", "sdpa"]

Any other key of an entry (steps, width, height, warmup, runs, precisions, batch_size, prompt, tag,
ep_options) is passed to `dfast.bench` (steps and batch_size under diffusers' names). Entries that select the same node run there one after another (a custom resource of
amount 1 admits one entry at a time); entries on different nodes run at once.

OUT receives results.csv (dfast bench's columns, then node_id, hostname, node_cpu, node_gpu, matrix_entry),
images/ENTRY/ (each row's image, fetched from its node) and report/ (report.md and report.png by
`dfast.report`).
"""

import argparse
import csv
import io
import sys
import tempfile
from pathlib import Path

import tomllib

import ray_common
from ray_common import BadInput

NODE_COLUMNS = ["node_id", "hostname", "node_cpu", "node_gpu", "matrix_entry"]
# Matrix keys that are the entry's own, not dfast.bench's.
ENTRY_KEYS = {"name", "resources", "labels", "model", "eps", "profiles"}
# `dfast bench`'s flag names in the matrix, diffusers' names in dfast.bench.
BENCH_NAMES = {"steps": "num_inference_steps", "batch_size": "num_images_per_prompt"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--matrix", required=True, type=Path, help="the matrix (TOML), as above")
    p.add_argument("--out", required=True, type=Path, help="output folder (created): results.csv, images/, report/")
    p.add_argument("--title", default="dfast across machines: total seconds per setting", help="the report's title")
    ray_common.add_ray_flags(p)
    return p.parse_args(argv)


def read_matrix(path):
    """The entries of the matrix file, defaults applied; a mistake is one sentence naming the file and entry."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"{path}: cannot read the matrix ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: not a TOML file ({e})") from None
    unknown = sorted(set(doc) - {"defaults", "entry"})
    if unknown:
        raise BadInput(f"{path}: unknown table `{unknown[0]}`; expected [defaults] and [[entry]] tables")
    defaults = doc.get("defaults", {})
    raw = doc.get("entry", [])
    if not isinstance(defaults, dict) or not isinstance(raw, list) or not raw:
        raise BadInput(f"{path}: no [[entry]]; expected one [[entry]] table per node selector")
    entries, names = [], set()
    for i, given in enumerate(raw, start=1):
        entry = {**defaults, **given}
        where = f"{path}: entry {i}"
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise BadInput(f"{where}: `name` must be a non-empty text without `/`")
        if name in names:
            raise BadInput(f"{where}: the name `{name}` is used twice; each entry needs its own")
        names.add(name)
        where = f"{path}: entry `{name}`"
        resources, labels = entry.get("resources"), entry.get("labels")
        if (resources is None) == (labels is None):
            raise BadInput(f"{where}: give its node selector as `resources = {{...}}` or `labels = {{...}}`")
        if resources is not None and not (
            isinstance(resources, dict) and resources and all(isinstance(v, (int, float)) for v in resources.values())
        ):
            raise BadInput(f"{where}: `resources` must be a table of resource names and amounts")
        if labels is not None and not (
            isinstance(labels, dict) and labels and all(isinstance(v, str) for v in labels.values())
        ):
            raise BadInput(f"{where}: `labels` must be a table of label names and values (text)")
        if not isinstance(entry.get("model"), str):
            raise BadInput(f"{where}: `model` (a pipeline folder or repo id) is missing")
        for key in ("eps", "profiles"):
            value = entry.get(key)
            if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
                raise BadInput(f"{where}: `{key}` must be a list of names, e.g. {key} = [\"cpu\"]")
        entry["model"] = ray_common.model_path(entry["model"])
        entries.append(entry)
    return entries


def bench_entry(entry):
    """Runs on the selected node: dfast.bench over the entry; its rows with the node's facts, and each row's
    image (bytes) from the node's scratch folder."""
    import dfast

    node = ray_common.node_info()
    kwargs = {BENCH_NAMES.get(k, k): v for k, v in entry.items() if k not in ENTRY_KEYS}
    kwargs.setdefault("tag", entry["name"])
    with tempfile.TemporaryDirectory(prefix="dfast-ray-bench-") as scratch:
        rows = dfast.bench(entry["model"], scratch, eps=entry["eps"], profiles=entry["profiles"], **kwargs)
        rows = [dict(row) for row in rows]
        images = {}
        for row in rows:
            image = row.get("image") or ""
            if image and (Path(scratch) / image).is_file():
                images[image] = (Path(scratch) / image).read_bytes()
    for row in rows:
        row.update(node, matrix_entry=entry["name"])
    return rows, images


def write_rows(rows, path):
    columns = [c for c in rows[0] if c not in NODE_COLUMNS]
    columns += [c for row in rows for c in row if c not in columns and c not in NODE_COLUMNS]
    columns += NODE_COLUMNS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(columns)), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    ray_common.write_atomic(path, buf.getvalue().encode())


def run(args):
    """Runs the matrix; returns the entries that failed, one sentence each."""
    entries = read_matrix(args.matrix)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out {args.out}: cannot create the output folder ({e.strerror})") from None
    import ray

    ray_common.init_ray(args.address, args.object_store_mb)
    task = ray.remote(bench_entry)
    pending = {}
    for entry in entries:
        if "resources" in entry:
            options = {"resources": entry["resources"]}
        else:
            options = {"label_selector": entry["labels"]}
        ref = task.options(num_cpus=0, max_retries=0, name=f"bench:{entry['name']}", **options).remote(entry)
        pending[ref] = entry["name"]
        print(f"entry {entry['name']}: queued", flush=True)
    rows, failures = [], []
    while pending:
        [ref], _ = ray.wait(list(pending))
        name = pending.pop(ref)
        try:
            entry_rows, images = ray.get(ref)
        except Exception as e:  # noqa: BLE001 -- one entry's failure is reported; the others still count
            cause = getattr(e, "cause", None) or e
            lines = str(cause).strip().splitlines() or [repr(cause)]
            failures.append(f"entry `{name}`: {lines[-1]}")
            continue
        folder = args.out / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for row in entry_rows:
            data = images.get(row.get("image") or "")
            if data is not None:
                target = folder / Path(row["image"]).name
                ray_common.write_atomic(target, data)
                row["image"] = str(target.relative_to(args.out))
        nodes = sorted({r["node_id"] for r in entry_rows})
        print(f"entry {name}: {len(entry_rows)} rows from node {', '.join(nodes)}", flush=True)
        rows.extend(entry_rows)
    if not rows and not failures:
        failures.append("no entry measured anything (every combination was skipped; see the warnings above)")
    if rows:
        results = args.out / "results.csv"
        write_rows(rows, results)
        import dfast

        dfast.report([str(results)], str(args.out / "report"), title=args.title)
        print(f"wrote {results} ({len(rows)} rows) and {args.out / 'report' / 'report.md'}", flush=True)
    return failures


def main(argv=None):
    return ray_common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
