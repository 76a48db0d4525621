#!/usr/bin/env python3
"""Training steps lost to the live viewer (issue 18's done-when: <= 10 % on lego_400): the same ``ngp train-nerf``
for the same wall time without and then with ``--viewer``, a headless Chromium tab watching the second one (its
camera still, so the viewer renders the model as it trains: a full-size frame after every log step, within the
share).

    python benchmarks/viewer_training.py ../shared/data/nerf/lego_400 --seconds 120 [--share 0.1] [--size 800x600]

Prints one JSON line: the steps of each run, their ratio, and the frames the viewer sent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_viewer import _Browser, _chromium, _free_port, _view_process, _wait_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--share", type=float, default=0.1)
    ap.add_argument("--size", default="800x600")
    ap.add_argument("--no-browser", action="store_true", help="serve the viewer with no tab open")
    ap.add_argument("--browser-nice", type=int, default=0, help="run the browser at this niceness (19: it takes "
                                                                 "the CPU the training leaves, as a browser on "
                                                                 "another machine would)")
    args = ap.parse_args()
    if _chromium() is None:
        sys.exit("viewer_training: chromium is not installed")
    runs = Path(tempfile.mkdtemp(prefix="ngp-viewer-training-"))
    common = ["train-nerf", str(args.dataset), "--runs-dir", str(runs), "--backend", "cpu", "--steps", "1000000",
              "--set", f"train.max_time_s={args.seconds}", "--set", "train.eval_every=0",
              "--set", "train.final_eval_views=0", "--set", "nerf.render_views=0", "--json"]
    plain = subprocess.run([sys.executable, "-m", "ngp_cli", *common, "--name", "plain"], capture_output=True,
                           text=True, check=True)
    steps_plain = [json.loads(line) for line in plain.stdout.splitlines()][-1]["step"]
    proc, _, events, reader = _view_process([*common, "--name", "viewed", "--viewer", "--viewer-port",
                                             str(_free_port()), "--viewer-share", str(args.share)])
    url = _wait_for(events, "serving", proc, 300)["url"]
    width, height = (int(v) for v in args.size.split("x"))
    browser = None if args.no_browser else _Browser(width, height, nice=args.browser_nice)
    if browser is not None:
        browser.call("Page.navigate", url=url)
    proc.wait()
    if browser is not None:
        browser.close()
    reader.join(timeout=10)
    time.sleep(0.1)
    done = [e for e in events if e["event"] == "done"][-1]
    frames = [e for e in events if e["event"] == "frame"]
    print(json.dumps({"event": "viewer_training", "dataset": str(args.dataset), "seconds": args.seconds,
                      "share": args.share, "browser": not args.no_browser, "browser_nice": args.browser_nice, "steps_without": steps_plain,
                      "steps_with": done["step"], "viewer_s": done["metrics"].get("viewer_s"),
                      "contended_s": done["metrics"].get("viewer_contended_s"),
                      "ratio": round(done["step"] / steps_plain, 4), "frames": len(frames),
                      "frame_sizes": sorted({(e["width"], e["height"]) for e in frames}),
                      "render_s_median": sorted(e["render_s"] for e in frames)[len(frames) // 2] if frames else None}))


if __name__ == "__main__":
    main()
