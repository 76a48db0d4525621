#!/usr/bin/env bash
# The GPU session: everything a lent GPU should run, in one command of at most 10 minutes, self-contained on the device
# image (torch, CuPy, typer, rich, imageio, scikit-image, scipy, safetensors, pytest; no trimesh, imageio-ffmpeg or
# openexr; nothing can be fetched there).
#
#   bash benchmarks/gpu_session.sh --dry-run      every step with its timeout, and their total; runs nothing
#   bash benchmarks/gpu_session.sh                results under $OUT (default ./gpu-results)
#   bash benchmarks/gpu_session.sh --only kernels,bench    (or --skip nerf,sdf): a subset, for a rerun
#   bash benchmarks/gpu_session.sh --multi-gpu    on a machine with several GPUs: data-parallel NeRF scaling over
#                                                 1/2/4/8 GPUs (NCCL, --nproc) instead of the single-GPU steps
#
# Order: probe (no usable GPU: one line on stderr and exit 5 within 30 s), environment, carried wheels, install,
# the cuda target's own check (aborts loudly if it fails), correctness (GPU tests, compute-sanitizer), performance
# (per-kernel CUDA-event timings, ngp bench, lego_400 NeRF, armadillo SDF, fit-image on albert), report.
# Every step runs under `timeout`; the timeouts add up to less than 10 minutes, and a step that would end past the
# session's limit is skipped. A failing or timed-out step is recorded and the session goes on (its minutes are
# precious); the exit status is then 1.
#
# Files written under $OUT (at most 8, as the device tool brings back): summary.md (ready for
# docs/benchmarks/<date>-<gpu>.md), session.json (every step, the environment, every result), session.log (all output),
# kernels.json + kernels.md (benchmarks/gpu_kernels.py), bench.json (ngp bench --backend cuda), render.json (the
# nerf step's run: one held-out lego_400 view as ngp eval and as ngp render render it, ngp bench --run).
#
# Inputs: data under $NGP_DATA, else ./shared/data, else ../shared/data (only the checkout travels to the device: copy
# nerf/lego_400, sdf/armadillo and image/albert into ./shared/data there, or a carried folder named by NGP_DATA);
# wheels of missing packages (e.g. trimesh for the SDF step) in $NGP_WHEELS (default ./.whl), installed offline.
set -euo pipefail

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$self")/.."
repo="$PWD"
py="${PYTHON:-python3}"
limit_s=600        # one device command's limit
session_budget=570 # what the steps may use together (margin for the report and the machine)

# name:timeout_s, in order. Keep the sum <= $session_budget (tests/test_gpu_session.py checks it).
STEPS=(probe:25 info:20 wheels:10 install:25 cuda-target:40 pytest-gpu:110 memcheck:30 racecheck:30 kernels:40
       bench:45 nerf:75 sdf:65 image:35 report:10)
# --multi-gpu: lego_400 trained 45 s on 1, 2, 4 and 8 GPUs (as many as there are), steps/s and all-reduce time each.
STEPS_MULTI=(probe:25 info:20 wheels:10 install:25 cuda-target:40 scaling:340 report:10)

step_command() {  # the command of a step, for --dry-run and the log
    case "$1" in
        probe) echo "nvidia-smi -L (5 s); $py benchmarks/gpu_kernels.py probe (20 s)" ;;
        wheels) echo "$py -m pip install --no-index --no-deps --target \$WORK/site $wheels/*.whl (if any)" ;;
        install) echo "$py -m pip install --no-index --no-deps --no-build-isolation -e . (else PYTHONPATH=$repo and" \
                      "the built-in task fallback); $py -m ngp_cli tasks" ;;
        info) echo "nvidia-smi; $py benchmarks/gpu_kernels.py info" ;;
        cuda-target) echo "$py benchmarks/gpu_kernels.py check --log2-n 16 (hash grid + fused MLP vs torch)" ;;
        pytest-gpu) echo "CUDA_LAUNCH_BLOCKING=1 $py -m pytest -m gpu -x tests/cuda" ;;
        memcheck|racecheck) echo "compute-sanitizer --tool $1 $py benchmarks/gpu_kernels.py check --log2-n 12" ;;
        kernels) echo "$py benchmarks/gpu_kernels.py time --log2-sizes 18 21 --out $out" ;;
        bench) echo "$py -m ngp_cli bench --backend cuda --batch 262144 --batch 2097152 --out $out/bench.json" ;;
        nerf) echo "$py -m ngp_cli train-nerf $data/nerf/lego_400 --backend cuda --set train.max_time_s=50" \
                   "--set train.final_eval_views=10; $py -m ngp_cli bench --backend cuda --run RUN --only" \
                   "render_network --only render_frame --out $out/render.json" ;;
        sdf) echo "$py -m ngp_cli train-sdf $data/sdf/armadillo/armadillo.obj --backend cuda" \
                  "--set train.max_time_s=60 (needs trimesh)" ;;
        image) echo "$py -m ngp_cli fit-image $data/image/albert/albert.exr (albert.jpg without OpenEXR)" \
                    "--backend cuda --set train.max_time_s=25" ;;
        scaling) echo "for k in 1 2 4 8 (<= GPUs): $py -m ngp_cli train-nerf $data/nerf/lego_400 --backend cuda" \
                      "--nproc k --set train.max_time_s=45 (no final evaluation); $py benchmarks/gpu_kernels.py" \
                      "scaling-line k \$WORK/runs/nerf/*-scaling-k >> \$WORK/scaling.jsonl" ;;
        report) echo "$py benchmarks/gpu_kernels.py report \$WORK $out" ;;
    esac
}

die() {  # one line on stderr, then exit with $1
    local code="$1"
    shift
    echo "gpu_session: $*" >&2
    exit "$code"
}

skip() {  # inside a step: record why it is skipped, and end it
    echo "$*" > "$WORK/$STEP.skip"
    echo "SKIPPED $STEP: $*"
    exit 77
}

# ---- the steps (each runs as `timeout N bash gpu_session.sh --step NAME`) ---------------------------------------

step_wheels() {
    shopt -s nullglob
    local whl=("$wheels"/*.whl)
    if [ "${#whl[@]}" -gt 0 ]; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${whl[@]}"
        echo "installed ${#whl[@]} carried wheel(s) into $WORK/site"
    else
        echo "no wheels in $wheels" > "$WORK/wheels.skip"
    fi
    for mod in trimesh imageio_ffmpeg OpenEXR; do
        if "$py" -c "import $mod" 2> /dev/null; then echo "optional package $mod: present"
        else echo "optional package $mod: MISSING (steps needing it are skipped)"; fi
    done
}

step_install() {
    if "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e .; then
        echo "installed ngp-cli (editable, offline)"
    else
        echo "pip install failed: running from PYTHONPATH=$repo with the built-in task fallback" > "$WORK/install.skip"
        echo "NOTE: pip install failed: running from PYTHONPATH=$repo with the built-in task fallback"
    fi
    local tasks
    tasks="$("$py" -m ngp_cli tasks)"
    echo "$tasks"
    for t in image nerf sdf nrc; do
        grep -q "\"name\":\"$t\"" <<< "$tasks" || { echo "task '$t' not found: ngp cannot run it"; exit 1; }
    done
}

step_info() {
    nvidia-smi || true
    "$py" benchmarks/gpu_kernels.py info --out "$WORK/info.json"
}

step_cuda_target() {
    "$py" benchmarks/gpu_kernels.py check --log2-n 16
}

step_pytest_gpu() {
    local par=()
    if "$py" -c "import xdist" 2> /dev/null; then par=(-n 6); fi  # NVRTC compiles dominate: spread them
    CUDA_LAUNCH_BLOCKING=1 "$py" -m pytest -q -rs -m gpu -x -p no:cacheprovider "${par[@]}" tests/cuda \
        2>&1 | tee "$WORK/pytest-gpu.txt"
    # A probe that fails turns every GPU test into a skip: that must not read as a pass.
    if grep -q "probe failed" "$WORK/pytest-gpu.txt"; then echo "GPU tests were skipped: the probe failed"; exit 1; fi
}

step_sanitizer() {  # $1: memcheck or racecheck
    command -v compute-sanitizer > /dev/null || skip "compute-sanitizer not found"
    # Without torch's caching allocator every tensor is its own allocation, so memcheck sees overruns between them.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$1" --error-exitcode 86 --print-limit 20 \
        "$py" benchmarks/gpu_kernels.py check --log2-n 12
}

step_kernels() {
    "$py" benchmarks/gpu_kernels.py time --device cuda --log2-sizes 18 21 --out "$out"
}

step_bench() {
    "$py" -m ngp_cli bench --backend cuda --batch 262144 --batch 2097152 --repeats 5 --out "$out/bench.json" \
        > "$WORK/bench.out"
}

task_run() {  # $1 step name, then the ngp command line; stdout (JSON lines) kept for the report
    local name="$1"
    shift
    "$py" -m ngp_cli "$@" --backend cuda --runs-dir "$WORK/runs" --name "$name" > "$WORK/$name.out"
    tail -n 1 "$WORK/$name.out"
}

step_nerf() {
    local scene="$data/nerf/lego_400"
    [ -f "$scene/transforms_train.json" ] || skip "no lego_400 dataset at $scene (see shared/data/INDEX.md)"
    task_run nerf train-nerf "$scene" --set train.max_time_s=50 --set train.final_eval_views=10
    # Issue 17's GPU numbers: one held-out view of the run just trained, as ngp eval (1e-4) and ngp render (0.01)
    # render it (a 400x400 view; ms per megapixel in ns_per_element).
    local run
    run="$(ls -d "$WORK"/runs/nerf/*-nerf | tail -n 1)"
    "$py" -m ngp_cli bench --backend cuda --run "$run" --only render_network --only render_frame --repeats 5 \
        --warmup 2 --out "$out/render.json" > "$WORK/render.out"
}

step_sdf() {
    local mesh="$data/sdf/armadillo/armadillo.obj"
    [ -f "$mesh" ] || skip "no armadillo mesh at $mesh"
    "$py" -c "import trimesh" 2> /dev/null || skip "trimesh is not installed (carry its wheel in $wheels)"
    task_run sdf train-sdf "$mesh" --set train.max_time_s=60
}

step_image() {
    local photo="$data/image/albert/albert.exr"
    # The EXR needs OpenEXR, missing on the device image; the tiny-cuda-nn JPEG of the same photo needs nothing.
    if ! "$py" -c "import OpenEXR" 2> /dev/null || [ ! -f "$photo" ]; then photo="$data/image/albert/albert.jpg"; fi
    [ -f "$photo" ] || skip "no albert image under $data/image/albert"
    task_run image fit-image "$photo" --set train.max_time_s=25
}

step_scaling() {
    local scene="$data/nerf/lego_400" n k
    [ -f "$scene/transforms_train.json" ] || skip "no lego_400 dataset at $scene (see shared/data/INDEX.md)"
    n=$(nvidia-smi -L | grep -c '^GPU')
    [ "$n" -ge 2 ] || skip "$n GPU: data-parallel scaling needs at least 2"
    for k in 1 2 4 8; do
        [ "$k" -le "$n" ] || break
        "$py" -m ngp_cli train-nerf "$scene" --backend cuda --nproc "$k" --runs-dir "$WORK/runs" --name "scaling-$k" \
            --set train.max_time_s=45 --set train.final_eval_views=0 --set nerf.render_views=0 --json \
            > "$WORK/scaling-$k.out"
        "$py" benchmarks/gpu_kernels.py scaling-line "$k" "$WORK"/runs/nerf/*-scaling-"$k" >> "$WORK/scaling.jsonl"
        tail -n 1 "$WORK/scaling.jsonl"
    done
}

step_report() {
    "$py" benchmarks/gpu_kernels.py report "$WORK" "$out"
}

run_one_step() {  # the body of `--step NAME`, in its own process under timeout
    STEP="$1"
    case "$1" in
        wheels) step_wheels ;;
        install) step_install ;;
        info) step_info ;;
        cuda-target) step_cuda_target ;;
        pytest-gpu) step_pytest_gpu ;;
        memcheck|racecheck) step_sanitizer "$1" ;;
        kernels) step_kernels ;;
        bench) step_bench ;;
        nerf) step_nerf ;;
        sdf) step_sdf ;;
        image) step_image ;;
        scaling) step_scaling ;;
        report) step_report ;;
        *) die 2 "unknown step '$1'" ;;
    esac
}

# ---- arguments ---------------------------------------------------------------------------------------------------

out="${OUT:-gpu-results}"
data="${NGP_DATA:-}"
if [ -z "$data" ]; then
    data="shared/data"
    [ -d "$data" ] || data="../shared/data"
fi
wheels="${NGP_WHEELS:-.whl}"
export py out data wheels repo

if [ "${1:-}" = "--step" ]; then
    run_one_step "$2"
    exit 0
fi

dry_run=0
only=""
skip_list=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --multi-gpu) STEPS=("${STEPS_MULTI[@]}") ;;
        --only) only=",${2:?--only needs a comma-separated list of steps},"; shift ;;
        --skip) skip_list=",${2:?--skip needs a comma-separated list of steps},"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die 2 "unknown argument '$1' (use --dry-run, --multi-gpu, --only STEPS, --skip STEPS or --help)" ;;
    esac
    shift
done
for list in "$only" "$skip_list"; do
    for name in ${list//,/ }; do
        [[ " ${STEPS[*]} " == *" $name:"* ]] || die 2 "unknown step '$name' (steps: ${STEPS[*]%%:*})"
    done
done

selected() {  # probe and report always run
    [ "$1" = probe ] || [ "$1" = report ] && return 0
    [ -n "$only" ] && [[ "$only" != *",$1,"* ]] && return 1
    [[ "$skip_list" == *",$1,"* ]] && return 1
    return 0
}

if [ "$dry_run" = 1 ]; then
    total=0
    i=0
    for entry in "${STEPS[@]}"; do
        name="${entry%%:*}" t="${entry##*:}"
        i=$((i + 1))
        selected "$name" || continue
        total=$((total + t))
        printf 'step %02d %-12s timeout %3d s: %s\n' "$i" "$name" "$t" "$(step_command "$name")"
    done
    echo "total of timeouts: $total s (limit $limit_s s; steps may use $session_budget s)"
    exit 0
fi

# ---- probe: no usable GPU stops here, within 30 s, before anything is written --------------------------------------

command -v nvidia-smi > /dev/null || die 5 "no usable GPU: nvidia-smi not found (run this on the lent GPU machine)"
timeout -k 1 5 nvidia-smi -L > /dev/null 2>&1 || die 5 "no usable GPU: 'nvidia-smi -L' failed or timed out (no driver?)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
probe_msg="$(timeout -k 1 20 "$py" benchmarks/gpu_kernels.py probe 2>&1)" || {
    rc=$?
    [ "$rc" -ge 124 ] && die 5 "no usable GPU: the torch/CuPy probe did not finish in 20 s"
    die 5 "$(tail -n 1 <<< "$probe_msg" | sed 's/^gpu_kernels: //')"
}

if [ -e "$out/summary.md" ]; then
    die 6 "$out already holds a session's results (summary.md): move them away or set OUT to another folder"
fi
mkdir -p "$out"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ngp-gpu-session.XXXXXX")"
export WORK
export PYTHONPATH="$WORK/site:$PYTHONPATH"  # carried wheels (step wheels) first
export NGP_CACHE_DIR="${NGP_CACHE_DIR:-$WORK/ngp-cache}" CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-$WORK/cupy-cache}"
export PYTHONUNBUFFERED=1
log="$out/session.log"
session_start=$(date +%s)
echo "$probe_msg" | tee -a "$log"

failed=()
run_step() {  # name timeout: runs it (or records why not), appends a line to $WORK/steps.jsonl
    local name="$1" t="$2" status reason="" rc=0 start elapsed
    start=$(date +%s)
    elapsed=$((start - session_start))
    if ! selected "$name"; then
        status=skipped reason="not selected (--only/--skip)"
    elif [ "$name" != report ] && [ $((elapsed + t)) -gt "$session_budget" ]; then
        status=skipped reason="would end past the session's ${session_budget} s (at ${elapsed} s now)"
    else
        echo "==== step $name (timeout $t s, at ${elapsed} s): $(step_command "$name")" | tee -a "$log"
        set +e
        timeout -k 2 "$t" bash "$self" --step "$name" 2>&1 | tee -a "$log" "$WORK/$name.log"
        rc=${PIPESTATUS[0]}
        set -e
        if [ "$rc" = 0 ]; then status=ok
        elif [ "$rc" = 77 ]; then status=skipped
        elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout reason="stopped at its $t s timeout"
        else status=failed reason="exit $rc: $(grep -v '^[[:space:]]*$' "$WORK/$name.log" | tail -n 1 | cut -c 1-200)"
        fi
        [ -f "$WORK/$name.skip" ] && reason="$(head -c 300 "$WORK/$name.skip")"
    fi
    [ "$status" = skipped ] && [ -n "$reason" ] && echo "==== step $name skipped: $reason" | tee -a "$log"
    [ "$status" = failed ] || [ "$status" = timeout ] && failed+=("$name")
    "$py" -c 'import json, sys; print(json.dumps(dict(zip(("step", "status", "rc", "seconds", "timeout_s", "reason"),
        (sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])))))' \
        "$name" "$status" "$rc" "$(($(date +%s) - start))" "$t" "$reason" >> "$WORK/steps.jsonl"
    [ "$status" != failed ] && [ "$status" != timeout ]
}

echo "{\"step\": \"probe\", \"status\": \"ok\", \"rc\": 0, \"seconds\": 0, \"timeout_s\": 25, \"reason\": \"\"}" \
    > "$WORK/steps.jsonl"
for entry in "${STEPS[@]:1}"; do
    name="${entry%%:*}" t="${entry##*:}"
    [ "$name" = report ] && continue
    if ! run_step "$name" "$t" && [ "$name" = cuda-target ]; then
        echo "!!!! THE CUDA TARGET DOES NOT WORK: its kernels fail to compile, launch or match torch; see above." \
            "Stopping: every later figure would be meaningless." | tee -a "$log" >&2
        run_step report 10 || true
        exit 1
    fi
done
run_step report 10 || true
echo "==== done in $(($(date +%s) - session_start)) s; results in $out; failed steps: ${failed[*]:-none}" \
    | tee -a "$log"
[ "${#failed[@]}" = 0 ]
