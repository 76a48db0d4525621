"""The machine record of bench results and run summaries: CPU model, ISA features, chosen paths."""

from __future__ import annotations

import torch

from ngp_cli import hardware, machine


def test_isa_features_come_from_the_cpuinfo_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpuinfo", lambda: ("Some CPU", ("fpu", "avx2", "fma", "amx_bf16", "sse2")))
    assert hardware.isa_features() == ["avx2", "fma", "amx_bf16"]


def test_cpuinfo_reads_the_model_and_flags_of_the_first_cpu(monkeypatch, tmp_path):
    text = ("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
            "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    fake = tmp_path / "cpuinfo"
    fake.write_text(text)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    hardware.cpuinfo.cache_clear()
    try:
        assert hardware.cpuinfo() == ("Test CPU 9000", ("fpu", "avx2", "avx512f", "avx512_bf16"))
    finally:
        hardware.cpuinfo.cache_clear()


def test_machine_info_names_the_cpu_mlp_path_and_how_it_was_chosen(monkeypatch):
    from ngp_cli.cuda import cpu_mlp

    monkeypatch.setenv("NGP_CPU_MLP", "torch")
    info = machine.machine_info()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert info["paths"]["cpu_mlp"] == {"path": "torch", "how": "env"}
    assert set(info["isa"]) <= set(hardware.ISA_FEATURES)
    monkeypatch.delenv("NGP_CPU_MLP")
    chosen = cpu_mlp.CPUMLPChoice("fp32", "cached", {"fp32": 3.0, "torch": 4.0})
    monkeypatch.setattr(cpu_mlp, "_chosen", {torch.get_num_threads(): chosen})
    assert machine.machine_info()["paths"]["cpu_mlp"] == {"path": "fp32", "how": "cached",
                                                          "median_ms": {"fp32": 3.0, "torch": 4.0}}


def test_machine_info_records_an_invalid_cpu_mlp_override_instead_of_failing(monkeypatch):
    # machine_info is written at the end of every run, also of runs that never use the cpu MLP
    monkeypatch.setenv("NGP_CPU_MLP", "fastest")
    rec = machine.machine_info()["paths"]["cpu_mlp"]
    assert rec["path"] is None and rec["how"] == "env" and "NGP_CPU_MLP must be one of" in rec["error"]
