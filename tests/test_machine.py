"""The machine record of bench results and run summaries: CPU model, ISA features, chosen paths."""

from __future__ import annotations

import torch

from ngp_cli import machine


def test_isa_features_come_from_the_cpuinfo_flags(monkeypatch):
    monkeypatch.setattr(machine, "cpuinfo", lambda: ("Some CPU", ("fpu", "avx2", "fma", "amx_bf16", "sse2")))
    assert machine.isa_features() == ["avx2", "fma", "amx_bf16"]


def test_cpuinfo_reads_the_model_and_flags_of_the_first_cpu(monkeypatch, tmp_path):
    text = ("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
            "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    fake = tmp_path / "cpuinfo"
    fake.write_text(text)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    machine.cpuinfo.cache_clear()
    try:
        assert machine.cpuinfo() == ("Test CPU 9000", ("fpu", "avx2", "avx512f", "avx512_bf16"))
    finally:
        machine.cpuinfo.cache_clear()


def test_machine_info_names_the_cpu_mlp_precision_chosen_here():
    from ngp_cli.cuda.mlp import cpu_compute_dtype

    info = machine.machine_info()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert info["paths"]["cpu_mlp"] == str(cpu_compute_dtype()).removeprefix("torch.")
    assert set(info["isa"]) <= set(machine.ISA_FEATURES)
