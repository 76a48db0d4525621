"""Test package. It makes pytest put the repository root, not tests/, on sys.path: with tests/ itself there, tests/cuda
would shadow NVIDIA's `cuda` namespace package (cuda.pathfinder, which CuPy 14 imports), and CuPy would fail to import
under pytest."""
