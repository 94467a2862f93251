"""ray_bench.py on the two-node cluster: one matrix entry per node (selected by its custom resource), the rows
of both gathered into one results.csv naming their node, and one report."""

import csv

from conftest import node_ids

MATRIX = """\
[defaults]
model = "models/tiny-sd"
eps = ["cpu"]
profiles = ["baseline"]
steps = 2
warmup = 0
runs = 1

[[entry]]
name = "first"
resources = { node_a = 1 }

[[entry]]
name = "second"
resources = { node_b = 1 }
"""


def test_matrix_rows_from_both_nodes_and_one_report(cluster, script, tmp_path):
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(MATRIX)
    out = tmp_path / "out"
    run = script("ray_bench.py", "--address", cluster.address, "--matrix", matrix, "--out", out, timeout=400)
    assert run.finish() == 0, run.text()
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = node_ids(cluster)
    assert {(r["matrix_entry"], r["node_id"]) for r in rows} == {("first", ids["node_a"]), ("second", ids["node_b"])}
    for row in rows:
        assert row["hostname"] and row["node_cpu"] and float(row["total_s"]) > 0, row
        assert row["ep"] == "cpu" and row["profile"] == "baseline" and row["tag"] == row["matrix_entry"], row
        assert (out / row["image"]).is_file(), f"the row's image was not fetched from its node: {row['image']}"
    report = (out / "report" / "report.md").read_text()
    assert "first" in report and "second" in report, report
    assert (out / "report" / "report.png").stat().st_size > 0


def test_a_bad_matrix_is_one_sentence(script, tmp_path):
    matrix = tmp_path / "matrix.toml"
    matrix.write_text('[[entry]]\nname = "x"\nmodel = "m"\neps = ["cpu"]\nprofiles = ["baseline"]\n')
    run = script("ray_bench.py", "--matrix", matrix, "--out", tmp_path / "out", timeout=60)
    assert run.finish() == 2
    assert run.text().strip() == (
        f"error: {matrix}: entry `x`: give its node selector as `resources = {{...}}` or `labels = {{...}}`"
    )
