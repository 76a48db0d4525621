"""CUDA kernels and their CPU build: the only package that imports CuPy (docs/kernels.md).

One CUDA C++ source per kernel family (``*.cu``, headers ``common.cuh``), two targets: ``cuda`` (NVRTC through
CuPy, launched on torch's current stream) and ``cpu`` (the host C++ compiler with ``cpu_emu.h`` force-included,
blocks spread over a worker pool from ``cpu_launch.cpp``). :mod:`ngp_cli.cuda.runtime` compiles, caches, loads and
launches them (``load_module``, ``KernelModule.launch``).

This ``__init__`` imports nothing: importing ``ngp_cli.cuda`` stays free of torch, numpy and CuPy; only
:mod:`ngp_cli.cuda.runtime` (numpy at import, torch and CuPy on first use) pulls them in.
"""
