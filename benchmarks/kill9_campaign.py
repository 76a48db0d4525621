#!/usr/bin/env python3
"""Kill -9 campaign: SIGKILL ``ngp fit-image`` at random moments, some inside checkpoint writes, and check the run.

Each trial starts a fresh ``ngp fit-image`` run in a child process (a 128x128 photo, 8 levels with up to 2^17 entries:
a checkpoint is ~3 MB and takes a few ms to write; a checkpoint every few steps), waits for its first checkpoint, then
kills it with SIGKILL:

- ``random`` trials: after a uniformly random delay;
- ``in-write`` trials: as soon as a temporary file of a checkpoint write (``.step-*.tmp*`` from
  ``create_temp_beside``, or safetensors' own ``.tmpXXXXXX``) appears in ``checkpoints/``.

Then it checks (a) that the newest checkpoint of the run loads (``RunDir.latest_checkpoint``: no corrupt checkpoint
skipped on the way), (b) that ``ngp fit-image --resume RUN`` finishes with exit 0, and (c) that after that start no
temporary file is left in the run. One JSON line per trial on stdout, then a summary line.

    python benchmarks/kill9_campaign.py                       # 20 trials, torch backend
    python benchmarks/kill9_campaign.py --trials 30 --backend cpu --markdown docs/benchmarks/NAME.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMP = re.compile(r"^(\..+\.[0-9a-f]{8}\.tmp.*|\.tmp[A-Za-z0-9]{6})$")  # runs._TEMP_RE: what a write leaves


def _temporaries(run: Path) -> list[str]:
    out = []
    for folder in (run, run / "checkpoints", run / "renders", run / "meshes"):
        if folder.is_dir():
            out += [str(p.relative_to(run)) for p in folder.iterdir() if TEMP.match(p.name) or ".tmp" in p.name]
    return sorted(out)


def _photo(folder: Path) -> Path:
    import imageio.v3 as iio
    import numpy as np
    from skimage import data

    path = folder / "astro.png"
    iio.imwrite(path, np.ascontiguousarray(data.astronaut()[96:224, 160:288]))
    return path


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, poll: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def trial(index: int, mode: str, args: argparse.Namespace, rng: random.Random, root: Path, photo: Path) -> dict:
    from ngp_cli.errors import DataError
    from ngp_cli.runs import RunDir

    runs = root / f"trial-{index:02d}"
    base = [sys.executable, "-m", "ngp_cli", "-q"]
    train = ["fit-image", str(photo), "--runs-dir", str(runs), "--backend", args.backend, "--steps", str(args.steps),
             "--set", "encoding.n_levels=8", "--set", "encoding.log2_hashmap_size=17", "--set",
             "network.n_neurons=16", "--set", "train.batch_size=1024", "--set", "train.log_every=2",
             "--set", f"train.checkpoint_every={args.checkpoint_every}", "--set", "train.keep_checkpoints=2"]
    record: dict = {"event": "trial", "trial": index, "mode": mode}
    proc = subprocess.Popen(base + train, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ckpts = lambda: list(runs.glob("image/*/checkpoints/step-*.json"))  # noqa: E731
        if not _wait_for(ckpts, proc, 300, 0.01):
            record.update(ok=False, problem="no first checkpoint", stderr=proc.stderr.read().decode()[-300:])
            return record
        run = ckpts()[0].parents[1]
        if mode == "in-write":
            seen = _wait_for(lambda: any(TEMP.match(n) for n in os.listdir(run / "checkpoints")), proc, 60, 0.0005)
            record["killed_in_write"] = seen
        else:
            time.sleep(rng.uniform(0.0, args.max_delay))
        t_kill = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        record["exit_after_kill"] = proc.returncode
        record["finished_before_kill"] = proc.returncode == 0
        record["leftovers_after_kill"] = _temporaries(run)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    rd = RunDir(run)
    try:
        loaded = rd.latest_checkpoint()
        record["checkpoint_step"] = None if loaded is None else loaded.step
        record["checkpoint_loads"] = loaded is not None and not loaded.skipped
    except DataError as exc:
        record["checkpoint_loads"] = False
        record["checkpoint_error"] = str(exc)[:200]
    time.sleep(0.05)  # leftovers must be older than the resuming process
    t0 = time.monotonic()
    res = subprocess.run(base + ["fit-image", "--resume", str(run)], capture_output=True, text=True, timeout=600)
    record["resume_exit"] = res.returncode
    record["resume_s"] = round(time.monotonic() - t0, 2)
    record["kill_to_resume_done_s"] = round(time.monotonic() - t_kill, 2)
    if res.returncode != 0:
        record["resume_stderr"] = res.stderr.strip()[-300:]
    record["leftovers_after_resume"] = _temporaries(run)
    record["ok"] = (record["checkpoint_loads"] and res.returncode == 0 and not record["leftovers_after_resume"]
                    and (run / "summary.json").is_file())
    return record


def _markdown(args: argparse.Namespace, command: str, results: list[dict], summary: dict) -> str:
    import torch

    rows = "\n".join(
        f"| {r['trial']} | {r['mode']} | {'yes' if r.get('killed_in_write') else ''} | "
        f"{r.get('checkpoint_step')} | {'yes' if r.get('checkpoint_loads') else 'NO'} | "
        f"{', '.join(r.get('leftovers_after_kill', [])) or '-'} | {r.get('resume_exit')} | "
        f"{', '.join(r.get('leftovers_after_resume', [])) or '-'} | {'ok' if r['ok'] else 'FAIL'} |"
        for r in results)
    return f"""# Kill -9 campaign, {time.strftime('%Y-%m-%d')}

Issue 13 ("Done when"): SIGKILL `ngp fit-image` at random moments, including inside checkpoint writes; every kill must
leave a loadable checkpoint, `--resume` must finish with exit 0, and no temporary file may be left after that start.

- Machine: {platform.node() or 'unknown'}, {platform.machine()}, {os.cpu_count()} CPU(s) (shared with other work),
  {platform.system()} {platform.release()}; Python {platform.python_version()}, torch {torch.__version__}.
- Command: `{command}`
- Each trial: a fresh run ({args.steps} steps, backend `{args.backend}`, checkpoint every {args.checkpoint_every}
  steps, 2 kept; 8 levels of up to 2^17 entries on a 128x128 photo: a checkpoint with its Adam state is 2.9 MB).
  After its first checkpoint the process is killed: `random` trials after a uniform delay in [0, {args.max_delay}] s, `in-write`
  trials as soon as a temporary file of a checkpoint write appears in `checkpoints/` (polled every 0.5 ms).
  Then `RunDir.latest_checkpoint()` must load the newest checkpoint without skipping a corrupt one, and
  `ngp -q fit-image --resume RUN` must exit 0, write `summary.json` and leave no temporary file.

## Result

{summary['ok']} of {summary['trials']} trials passed ({summary['in_write_kills']} kills inside a checkpoint write;
{summary['leftovers_seen_after_kill']} kills left temporary files behind, all removed by the next start). Wall time {summary['wall_s']:.0f} s.

| trial | mode | killed in a write | newest checkpoint step | loads | temporaries after the kill | resume exit | temporaries after resume | |
|---:|---|---|---:|---|---|---:|---|---|
{rows}

Seed {args.seed}; rerun with the command above (the kill moments differ from run to run: they race the process).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--in-write-fraction", type=float, default=0.5, help="share of trials killed inside a write")
    ap.add_argument("--backend", default="torch", choices=["torch", "cpu"])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--checkpoint-every", type=int, default=3)
    ap.add_argument("--max-delay", type=float, default=1.5, help="longest random delay after the first checkpoint")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--markdown", type=Path, help="also write the result as this Markdown file")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    n_write = round(args.trials * args.in_write_fraction)
    modes = ["in-write"] * n_write + ["random"] * (args.trials - n_write)
    rng.shuffle(modes)
    results = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ngp-kill9-") as tmp:
        root = Path(tmp)
        photo = _photo(root)
        for i, mode in enumerate(modes):
            record = trial(i, mode, args, rng, root, photo)
            results.append(record)
            print(json.dumps(record), flush=True)
    summary = {"event": "summary", "trials": len(results), "ok": sum(r["ok"] for r in results),
               "in_write_kills": sum(bool(r.get("killed_in_write")) for r in results),
               "leftovers_seen_after_kill": sum(bool(r.get("leftovers_after_kill")) for r in results),
               "checkpoints_loaded": sum(bool(r.get("checkpoint_loads")) for r in results),
               "resumes_ok": sum(r.get("resume_exit") == 0 for r in results),
               "wall_s": round(time.monotonic() - t0, 1)}
    print(json.dumps(summary), flush=True)
    if args.markdown:
        command = "python benchmarks/kill9_campaign.py " + " ".join(sys.argv[1:])
        args.markdown.write_text(_markdown(args, command, results, summary))
    sys.exit(0 if summary["ok"] == summary["trials"] else 1)


if __name__ == "__main__":
    main()
