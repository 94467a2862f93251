"""`dfast.bench`, `dfast.convert` and `dfast.report` under a Python interpreter, and where ONNX Runtime
comes from."""

import csv
import importlib.util
from pathlib import Path

import dfast
import pytest
from conftest import TINY_SD


def test_bench_returns_the_csv_rows(tmp_path):
    out = tmp_path / "bench"
    rows = dfast.bench(TINY_SD, out, profiles=["baseline"], num_inference_steps=2, width=64, height=64, warmup=0,
                       runs=2)
    assert len(rows) == 1
    row = rows[0]
    with open(out / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    # The row has the CSV's columns, in order, and the CSV holds the same values.
    assert list(row) == list(written[0])
    assert {k: str(v) if v is not None else "" for k, v in row.items()}.items() >= {
        k: written[0][k] for k in ("model", "profile", "precision", "ep", "steps", "width", "timed_runs")
    }.items()
    assert (row["model"], row["profile"], row["precision"], row["ep"]) == ("tiny-sd", "baseline", "fp32", "cpu")
    assert row["steps"] == 2 and row["timed_runs"] == 2 and row["width"] == 64
    assert row["total_s"] > 0 and row["unet_step_ms"] > 0 and row["peak_host_mb"] > 0
    assert (out / row["image"]).is_file()


def test_bench_skips_with_a_reason(tmp_path):
    # The package's onnxruntime is the CPU build: the OpenVINO combination is skipped, and with it all.
    with (
        pytest.warns(UserWarning, match="skipped baseline-fp32-openvino: ") as caught,
        pytest.raises(dfast.DfastError, match="no combination could be measured"),
    ):
        dfast.bench(TINY_SD, tmp_path / "b", eps=["openvino"], profiles=["baseline"], num_inference_steps=1,
                    warmup=0, runs=1)
    assert caught[0].filename == __file__


def test_convert_then_generate_and_report(tmp_path):
    manifest = dfast.convert(TINY_SD, tmp_path / "fused", profile="fused", ep="cpu")
    assert manifest["profile"] == "fused" and manifest["execution_provider"] == "cpu"
    assert (tmp_path / "fused" / "dfast-manifest.json").is_file()
    with pytest.raises(dfast.DfastError, match="profile"):
        dfast.convert(TINY_SD, tmp_path / "x", profile="no-such-profile")
    dfast.bench(tmp_path / "fused", tmp_path / "bench", profiles=["baseline"], num_inference_steps=1, warmup=0,
                runs=1)
    summary = dfast.report([tmp_path / "bench"], tmp_path / "report")
    assert summary["rows"] == 1 and summary["models"] == ["fused"]
    assert {Path(f).name for f in summary["files"]} == {"results.csv", "report.md", "report.png"}


def test_onnx_runtime_comes_from_the_package(monkeypatch, tmp_path):
    capi = Path(next(iter(importlib.util.find_spec("onnxruntime").submodule_search_locations))) / "capi"
    monkeypatch.delenv("ORT_DYLIB_PATH", raising=False)
    found = Path(dfast.ort_library("cpu"))
    assert found.parent == capi and found.name.startswith("libonnxruntime.so")
    # An explicit path wins, then ORT_DYLIB_PATH (which the library reads itself).
    assert dfast.ort_library("cpu", tmp_path / "mine.so") == str(tmp_path / "mine.so")
    monkeypatch.setenv("ORT_DYLIB_PATH", str(tmp_path / "env.so"))
    assert dfast.ort_library("cpu") is None
    with pytest.raises(dfast.DfastError, match="ORT_DYLIB_PATH"):
        dfast.Pipeline(TINY_SD)


def test_a_pipeline_loads_the_package_library(tiny_sd):
    capi = Path(next(iter(importlib.util.find_spec("onnxruntime").submodule_search_locations))) / "capi"
    assert tiny_sd.ort_library.parent == capi
