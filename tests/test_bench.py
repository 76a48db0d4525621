"""``ngp bench``: JSON lines per figure, the --output file, and bad requests."""

from __future__ import annotations

import json

from ngp_cli.errors import EXIT_CONFIG, EXIT_NO_GPU, EXIT_USAGE


def test_bench_torch_backend_reports_every_benchmark(ngp, tmp_path):
    out = tmp_path / "bench.json"
    res = ngp("bench", "--backend", "torch", "--batch", "512", "--dims", "2", "--repeats", "2", "--warmup", "0",
              "--output", out)
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
    assert res.exit_code == EXIT_CONFIG and "unknown benchmark" in res.stderr
    res = ngp("bench", "--backend", "tpu")
    assert res.exit_code == EXIT_CONFIG and "must be torch, cpu or cuda" in res.stderr
    res = ngp("bench", "--backend", "torch", "--dims", "5")
    assert res.exit_code == EXIT_USAGE
    from ngp_cli.nn.backend import cuda_available

    if not cuda_available():
        res = ngp("bench", "--backend", "cuda")
        assert res.exit_code == EXIT_NO_GPU and "needs an NVIDIA GPU" in res.stderr
