#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one command (the device machine's image already has torch,
# CuPy, typer, rich, imageio, scikit-image, safetensors and pytest; nothing is installed, the checkout runs in place).
#
#   device run:  bash benchmarks/gpu_session.sh            (results under $OUT, or ./gpu-results without it)
#
# Writes: nvidia-smi.txt, pytest-gpu.txt (the GPU tests: CUDA launches against the reference and the CPU build),
# bench.json (ngp bench on every backend there), fit-*.json (fit-image on the astronaut, cuda and torch backends),
# sdf-1min.json and mesh-queries.json (when the armadillo is reachable), nrc.json (train-nrc on the Cornell box).
# Commit bench.json as docs/benchmarks/<date>-<gpu>-bench.json with a short write-up beside it.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NGP_CACHE_DIR="${NGP_CACHE_DIR:-/tmp/ngp-kernels}"
py="${PYTHON:-python3}"

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$py" -c "import torch, cupy; print(torch.__version__, cupy.__version__, torch.cuda.get_device_name())" \
    >> "$out/nvidia-smi.txt" 2>&1
# GPU tests first (marked gpu), then the CPU-target kernel tests again on this machine's CPU.
"$py" -m pytest -q -m gpu tests/cuda -p no:cacheprovider > "$out/pytest-gpu.txt" 2>&1
echo "pytest -m gpu exit $?" >> "$out/pytest-gpu.txt"
"$py" -m ngp_cli bench --repeats 7 --out "$out/bench.json" > "$out/bench.jsonl" 2> "$out/bench.txt"
for backend in cuda torch; do
    "$py" -m ngp_cli -q fit-image --backend "$backend" --runs-dir /tmp/ngp-gpu-runs > "$out/fit-$backend.json" \
        2> "$out/fit-$backend.err"
done
# SDF (issue 5): the IoU after one minute of training on the armadillo, and the mesh-query kernels' throughput.
mesh="${SDF_MESH:-../shared/data/sdf/armadillo/armadillo.obj}"
if [ -f "$mesh" ]; then
    "$py" -m ngp_cli -q train-sdf "$mesh" --preset sdf --set train.max_time_s=60 --runs-dir /tmp/ngp-gpu-runs \
        > "$out/sdf-1min.json" 2> "$out/sdf-1min.err"
    "$py" benchmarks/mesh_queries.py "$mesh" --out "$out/mesh-queries.json" > /dev/null 2>> "$out/sdf-1min.err"
fi
# NRC (issue 6): the Cornell box at equal time, path tracer and cache on the GPU.
"$py" -m ngp_cli -q train-nrc --runs-dir /tmp/ngp-gpu-runs > "$out/nrc.json" 2> "$out/nrc.err"
tail -n 3 "$out/pytest-gpu.txt" "$out/bench.txt" "$out"/fit-*.json
