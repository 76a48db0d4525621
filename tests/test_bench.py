"""``ngp bench``: JSON lines per figure, the --out file (and its deprecated spelling --output), and bad requests."""

from __future__ import annotations

import json

from ngp_cli.errors import EXIT_NO_GPU, EXIT_OUTPUT, EXIT_USAGE


def test_bench_torch_backend_reports_every_benchmark(ngp, tmp_path):
    out = tmp_path / "bench.json"
    res = ngp("bench", "--backend", "torch", "--batch", "512", "--dims", "2", "--repeats", "2", "--warmup", "0",
              "--out", out)
    assert res.exit_code == 0, res.stderr
    rows = [e for e in res.events if e["event"] == "bench"]
    assert {r["benchmark"] for r in rows} == {"encoding_forward", "encoding_forward_backward", "mlp_inference",
                                              "mlp_training", "train_step"}
    for r in rows:
        assert r["backend"] == "torch" and r["batch"] == 512 and r["median_s"] > 0
        assert abs(r["ns_per_element"] - r["median_s"] / 512 * 1e9) < 1e-6 * r["ns_per_element"]
        if r["benchmark"].startswith(("encoding", "mlp")):
            assert 0 < r["ceiling_fraction"]
    doc = json.loads(out.read_text())
    assert len(doc["results"]) == len(rows) and doc["machine"]["threads"] >= 1
    assert doc["ceilings"]["cpu"]["copy_bytes_per_s"] > 0 and doc["ceilings"]["cpu"]["matmul_flops_per_s"] > 0
    assert res.last("done")["n_results"] == len(rows)
    assert "ngp bench" in res.stderr  # the table title goes to stderr


def test_bench_bad_requests(ngp, tmp_path):
    res = ngp("bench", "--backend", "torch", "--only", "warp_speed", "--batch", "64")
    assert res.exit_code == EXIT_USAGE and "'warp_speed' is not one of 'encoding_forward'" in res.stderr
    res = ngp("bench", "--backend", "tpu")
    assert res.exit_code == EXIT_USAGE and "'tpu' is not one of 'cuda', 'cpu', 'torch'" in res.stderr
    res = ngp("bench", "--backend", "torch", "--dims", "5")
    assert res.exit_code == EXIT_USAGE
    from ngp_cli.nn.backend import cuda_available

    if not cuda_available():
        res = ngp("bench", "--backend", "cuda")
        assert res.exit_code == EXIT_NO_GPU and "needs an NVIDIA GPU" in res.stderr


_TINY = ["--backend", "torch", "--batch", "64", "--dims", "2", "--only", "mlp_inference", "--repeats", "1",
         "--warmup", "0"]


def test_bench_output_is_a_deprecated_spelling_of_out(ngp, tmp_path):
    from typer.testing import CliRunner

    from ngp_cli.cli import build_app

    out = tmp_path / "old.json"
    res = ngp("bench", *_TINY, "--output", out)
    assert res.exit_code == 0, res.stderr
    assert json.loads(out.read_text())["results"][0]["benchmark"] == "mlp_inference"
    assert "ngp: warning: --output is deprecated; use --out" in res.stderr
    assert res.last("done")["output"] == str(out)
    res = ngp("bench", *_TINY, "--output", out, "--out", tmp_path / "new.json")
    assert res.exit_code == EXIT_USAGE and "give --out only" in res.stderr
    helptext = CliRunner().invoke(build_app(), ["bench", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--out " in helptext and "--output" not in helptext  # hidden


def test_bench_out_is_checked_before_measuring(ngp, tmp_path):
    res = ngp("bench", *_TINY, "--out", tmp_path)
    assert res.exit_code == EXIT_OUTPUT and "is a directory" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # refused before the header line and the table
    assert not [e for e in res.events if e["event"] == "bench"]
    res = ngp("bench", *_TINY, "--out", tmp_path / "no" / "such" / "b.json")
    assert res.exit_code == EXIT_OUTPUT and "does not exist" in res.stderr
    assert not (tmp_path / "no").exists()
