"""``ngp bench``: JSON lines per figure, the --out file (and its deprecated spelling --output), and bad requests."""

from __future__ import annotations

import json

import pytest

from ngp_cli.errors import EXIT_CONFIG, EXIT_NO_GPU, EXIT_OUTPUT, EXIT_USAGE


def test_bench_torch_backend_reports_every_benchmark(ngp, tmp_path):
    out = tmp_path / "bench.json"
    res = ngp("bench", "--backend", "torch", "--batch", "512", "--dims", "2", "--repeats", "2", "--warmup", "0",
              "--out", out)
    assert res.exit_code == 0, res.stderr
    rows = [e for e in res.events if e["event"] == "bench"]
    assert {r["benchmark"] for r in rows} == {"encoding_forward", "encoding_forward_backward", "simplex_forward",
                                              "simplex_forward_backward", "mlp_inference", "mlp_training",
                                              "train_step"}
    for r in rows:
        assert r["backend"] == "torch" and r["batch"] == 512 and r["median_s"] > 0
        assert abs(r["ns_per_element"] - r["median_s"] / 512 * 1e9) < 1e-6 * r["ns_per_element"]
        if r["benchmark"].startswith(("encoding", "simplex", "mlp")):
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


def _result(backend, benchmark, batch, median_s, device="cpu"):
    from ngp_cli.bench import Result

    return Result(backend=backend, device=device, benchmark=benchmark, batch=batch, median_s=median_s,
                  elements_per_s=batch / median_s, ns_per_element=median_s / batch * 1e9)


def test_speed_ratios_divide_torch_by_cpu_per_benchmark_and_batch():
    from ngp_cli.bench import speed_ratios

    results = [_result("torch", "mlp_training", 64, 0.030), _result("cpu", "mlp_training", 64, 0.020),
               _result("torch", "train_step", 64, 0.090), _result("cpu", "train_step", 64, 0.030),
               _result("torch", "train_step", 128, 0.5),  # no cpu-backend partner: left out
               _result("cpu", "mlp_inference", 64, 0.01), _result("torch", "mlp_inference", 64, 0.02),  # not a target
               _result("torch", "mlp_training", 256, 0.001, device="cuda"), _result("cpu", "mlp_training", 256, 0.01)]
    assert speed_ratios(results) == {"mlp_training": {"64": 1.5}, "train_step": {"64": 3.0}}
    assert speed_ratios(results[:1]) == {}


def test_speed_ratios_divide_the_hash_grid_by_the_simplex_grid_per_dims_and_batch():
    from dataclasses import replace

    from ngp_cli.bench import speed_ratios

    rows = [replace(_result("cpu", "encoding_forward_backward", 65536, 0.030), dims=3),
            replace(_result("cpu", "simplex_forward_backward", 65536, 0.020), dims=3),
            replace(_result("cpu", "simplex_forward_backward", 65536, 0.010), dims=2),  # no 2-D hash grid: left out
            replace(_result("cpu", "encoding_forward", 65536, 0.008), dims=3),
            replace(_result("cpu", "simplex_forward", 65536, 0.010), dims=3)]
    assert speed_ratios(rows) == {"simplex_forward_backward": {"cpu@cpu 3-D 65536": 1.5},
                                  "simplex_forward": {"cpu@cpu 3-D 65536": 0.8}}


def test_bench_reports_the_cpu_over_torch_ratio_of_the_same_run(ngp, monkeypatch, tmp_path):
    from ngp_cli.nn.backend import cpu_kernels_available

    if not cpu_kernels_available():
        pytest.skip("the cpu backend needs a host C++ compiler")
    monkeypatch.setenv("NGP_CPU_MLP", "fp32")  # no micro-benchmark, a known path
    out = tmp_path / "b.json"
    res = ngp("bench", "--backend", "torch", "--backend", "cpu", "--batch", "256", "--only", "mlp_training",
              "--repeats", "2", "--warmup", "0", "--out", out)
    assert res.exit_code == 0, res.stderr
    median = {e["backend"]: e["median_s"] for e in res.events if e["event"] == "bench"}
    done = res.last("done")
    assert done["ratios"] == {"mlp_training": {"256": round(median["torch"] / median["cpu"], 3)}}
    assert json.loads(out.read_text())["ratios"] == done["ratios"]
    assert done["machine"]["paths"]["cpu_mlp"] == {"path": "fp32", "how": "env"}
    assert "cpu backend speed-up over torch (torch time / cpu time, this run): mlp_training 2^8 " in res.stderr


def test_bench_refuses_an_invalid_cpu_mlp_override_for_the_cpu_backend_only(ngp, monkeypatch):
    from ngp_cli.nn.backend import cpu_kernels_available

    monkeypatch.setenv("NGP_CPU_MLP", "fp16")
    res = ngp("bench", *_TINY)  # the torch backend does not use it: measured, the error only recorded
    assert res.exit_code == 0 and res.last("done")["ratios"] == {}
    assert "NGP_CPU_MLP must be one of" in res.last("done")["machine"]["paths"]["cpu_mlp"]["error"]
    if cpu_kernels_available():
        res = ngp("bench", "--backend", "cpu", *_TINY[2:])
        assert res.exit_code == EXIT_CONFIG
        assert res.stderr.strip().splitlines() == ["ngp: config error: NGP_CPU_MLP must be one of auto, bf16, fp32, "
                                                   "torch, got 'fp16'"]
