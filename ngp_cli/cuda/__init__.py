"""CUDA kernels (CuPy RawModule) and their CPU build: the only package that will import CuPy.

Empty in this release: the ``cuda`` and ``cpu`` kernel backends arrive with the CUDA-kernel work; until then
``--backend auto`` uses the PyTorch implementation in :mod:`ngp_cli.nn` (see :mod:`ngp_cli.nn.backend`).
"""
