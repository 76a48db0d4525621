#!/usr/bin/env python3
"""The viewer's done-when numbers (issue 18), measured in a real browser: ``ngp view``'s viewer of a run, opened in
headless Chromium (Debian's package, software WebGL), the camera then moved by the server along an orbit.

    python benchmarks/viewer_latency.py runs/nerf/<lego run> [--move-seconds 5] [--size 800x600] [--source baked]

Reports, as one JSON line on stdout:

* ``connect_s``: from the page's navigation to its websocket connecting (the browser loading viser's client);
* ``first_frame_s``: from the navigation to the first image sent to the page (a preview);
* ``first_full_s``: to the first full-size frame;
* while the camera moves (updates at 30 Hz for ``--move-seconds``): the frames sent per second and their sizes;
* ``refine_s``: from the camera's last move to the full-size frame of where it stopped (median of ``--stops`` stops).

The browser shares the two cores with the server here (a user's browser usually runs elsewhere, on a GPU), so these
numbers are pessimistic. The server runs in this process (the same viewer ``ngp view`` builds), so that each image
sent can be timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_viewer import _Browser, _chromium, _free_port  # noqa: E402 (the test's DevTools driver)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--source", default="baked", choices=("baked", "network"))
    ap.add_argument("--size", default="800x600", help="the browser window, WIDTHxHEIGHT")
    ap.add_argument("--move-seconds", type=float, default=5.0)
    ap.add_argument("--stops", type=int, default=3)
    args = ap.parse_args()
    if _chromium() is None:
        sys.exit("viewer_latency: chromium is not installed")

    from ngp_cli.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    from ngp_cli.pipeline import load_trained
    from ngp_cli.tasks import discover_tasks
    from ngp_cli.tasks.nerf.viewer import NerfViewer
    from ngp_cli.viewer.frames import c2w_to_viser
    from ngp_cli.viewer.server import start_server, stop_server
    from ngp_cli.volrend.baked import load_baked

    _, problem, meta = load_trained(discover_tasks()["nerf"], args.run, "cpu")
    baked = None
    if args.source == "baked":
        baked = load_baked(args.run / "baked.safetensors").to(problem.device)
    server = start_server("127.0.0.1", _free_port())
    viewer = NerfViewer(server, problem, args.run, int(meta["step"]), baked, helpers=False)
    sent: list[tuple[float, int, int, str]] = []  # (time, width, height, format)

    connected: list[float] = []

    def watch(client) -> None:
        connected.append(time.perf_counter())
        scene = client.scene
        original = scene.set_background_image

        def timed(image, format="auto", **kw):  # noqa: A002 (viser's name)
            original(image, format=format, **kw)
            sent.append((time.perf_counter(), image.shape[1], image.shape[0], format))

        scene.set_background_image = timed

    server.on_client_connect(watch)
    width, height = (int(v) for v in args.size.split("x"))
    browser = _Browser(width, height)
    t_nav = time.perf_counter()
    browser.call("Page.navigate", url=f"http://127.0.0.1:{server.get_port()}")
    while not any(f == "png" for *_, f in sent):
        time.sleep(0.01)
        if time.perf_counter() - t_nav > 120:
            sys.exit("viewer_latency: no full-size frame in 120 s")
    first_frame = sent[0][0] - t_nav
    first_full = next(t for t, *_, f in sent if f == "png") - t_nav
    client = next(iter(server.get_clients().values()))
    ds = problem.dataset
    from ngp_cli.tasks.nerf.camera_path import orbit_path

    orbit = orbit_path(ds.c2w, 360)
    moves = int(args.move_seconds * 30)
    refine = []
    t_move0 = time.perf_counter()
    k = 0
    for stop in range(args.stops):
        n0 = len(sent)
        t0 = time.perf_counter()
        for _ in range(moves // args.stops):
            wxyz, pos = c2w_to_viser(orbit[k % len(orbit)])
            k += 1
            with client.atomic():
                client.camera.wxyz = wxyz
                client.camera.position = pos
            time.sleep(max(0.0, t0 + (k - stop * (moves // args.stops)) / 30.0 - time.perf_counter()))
        t_last = time.perf_counter()
        while not any(f == "png" and t > t_last for t, *_, f in sent[n0:]):
            time.sleep(0.005)
        refine.append(next(t for t, *_, f in sent[n0:] if f == "png" and t > t_last) - t_last)
    t_move1 = time.perf_counter()
    previews = [(w, h) for t, w, h, f in sent if f == "jpeg" and t_move0 <= t <= t_move1]
    browser.close()
    viewer.stop()
    stop_server(server)
    moving_s = t_move1 - t_move0 - sum(refine)
    print(json.dumps({
        "event": "viewer_latency", "run": str(args.run), "source": args.source, "window": args.size,
        "canvas": [client.camera.image_width, client.camera.image_height],
        "connect_s": round(connected[0] - t_nav, 3), "first_frame_s": round(first_frame, 3),
        "first_full_s": round(first_full, 3),
        "moving_fps": round(len(previews) / max(moving_s, 1e-9), 2),
        "preview_pixels_median": statistics.median(w * h for w, h in previews) if previews else None,
        "preview_size_median": [int(statistics.median(w for w, _ in previews)),
                                int(statistics.median(h for _, h in previews))] if previews else None,
        "refine_s": [round(r, 3) for r in refine], "refine_s_median": round(statistics.median(refine), 3),
        "step": int(meta["step"])}))


if __name__ == "__main__":
    main()
