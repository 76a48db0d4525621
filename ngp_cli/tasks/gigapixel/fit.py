"""``ngp fit-image``'s work: the training problem (run by the shared pipeline, :mod:`ngp_cli.pipeline`) and the
tile-by-tile reconstruction, error map and PSNR."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngp_cli.distributed import World, all_reduce_sum, current_world, shared_tiles
from ngp_cli.images import ImageWriter, colormap, from_float, read_image
from ngp_cli.metrics import PSNRAccumulator
from ngp_cli.nn.backend import Backend
from ngp_cli.nn.model import NetworkWithInputEncoding
from ngp_cli.tasks.gigapixel.config import ImageConfig, default_photo
from ngp_cli.tasks.gigapixel.data import ImageTarget, pixel_centers
from ngp_cli.train import TrainState, make_loss, make_optimizer, sampling_generator, train_step


class ImageProblem:
    """Regress the photo's colour at random continuous positions (paper §5.1): x (N, 2) in [0,1]² → (N, C)."""

    def __init__(self, target: ImageTarget, cfg: ImageConfig, backend: Backend) -> None:
        self.target = target
        self.cfg = cfg
        self.device = backend.device
        init = torch.Generator().manual_seed(cfg.seed)
        # N_max comes from the config: fit_image records the photo-relative value there before training.
        self.model = NetworkWithInputEncoding(2, target.channels, cfg.encoding, cfg.network, generator=init,
                                              kernel_target=backend.kernel_target).to(self.device)
        self.l2_loss = cfg.loss.otype == "L2"
        self._band: tuple[float, float] | None = None  # rows a data-parallel shard samples (use_shard)

    def use_shard(self, shard: int, shards: int) -> None:
        """Data parallel (:func:`ngp_cli.train.train_step`): the next batch is shard ``shard`` of ``shards``, drawn
        in the horizontal band ``v ∈ [shard/shards, (shard+1)/shards)`` of the photo. The shards together still
        cover the photo uniformly (a stratified draw), and each process reads only its own bands' rows of a
        memory-mapped photo, so its share of the pages stays 1/processes."""
        self._band = (shard / shards, (shard + 1) / shards)

    def batch_loss(self, batch_size: int, generator: torch.Generator,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        uv = torch.rand(batch_size, 2, generator=generator)
        if self._band is not None:
            lo, hi = self._band
            uv[:, 1] = uv[:, 1] * (hi - lo) + lo
        target = self.target.sample(uv).to(self.device, non_blocking=True)
        pred = self.model(uv.to(self.device, non_blocking=True))
        loss = loss_fn(pred, target)
        if self.l2_loss:
            return loss, loss.detach()
        with torch.no_grad():
            return loss, (pred - target).square().mean()

    @torch.no_grad()
    def predict(self, uv: np.ndarray, chunk: int) -> np.ndarray:
        """Model output at (N, 2) float32 positions, as (N, C) float32, evaluated ``chunk`` points at a time."""
        out = np.empty((uv.shape[0], self.target.channels), dtype=np.float32)
        for s in range(0, uv.shape[0], chunk):
            x = torch.from_numpy(uv[s:s + chunk]).to(self.device)
            out[s:s + chunk] = self.model(x).float().cpu().numpy()
        return out


def _output_suffixes(photo: Path) -> tuple[str, str]:
    """(reconstruction, error map) suffixes: lossless and in the photo's family (PNG for PNG/JPEG, TIFF, EXR)."""
    suffix = photo.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return ".tif", ".tif"
    if suffix == ".exr":
        return ".exr", ".png"
    return ".png", ".png"


def evaluate(problem: ImageProblem, photo: Path, render_scale: float, tile_pixels: int, renders: Path,
             error_vmax: float, world: World | None = None) -> tuple[dict[str, Any], dict[str, str]] | None:
    """Full-image PSNR at the photo's resolution, and the reconstruction + error heat-map at ``render_scale``,
    all tile by tile (``tile_pixels`` pixels at a time) so memory stays bounded for gigapixel photos.

    The heat-map shows the mean absolute error over channels, saturating at ``error_vmax`` (normalised units).
    Returns ``(metrics, artifacts)``.

    With a data-parallel ``world`` (every process calls this), the tiles are dealt out round-robin: each process
    predicts and scores its own, sends its reconstruction and heat-map tiles to rank 0, which writes both images in
    order; the squared errors are summed over the processes. Rank 0 returns the results, the others None.
    """
    world = world or World()
    target = problem.target
    h, w, c = target.height, target.width, target.channels
    dtype = target.image.dtype
    if dtype == np.float16 and _output_suffixes(photo)[0] == ".png":
        dtype = np.dtype(np.uint16)
    rec_suffix, err_suffix = _output_suffixes(photo)
    rec_path = renders / f"reconstruction{rec_suffix}"
    err_path = renders / f"error{err_suffix}"
    out_h, out_w = max(1, round(h * render_scale)), max(1, round(w * render_scale))
    native = (out_h, out_w) == (h, w)
    psnr = PSNRAccumulator()
    t0 = time.perf_counter()

    def native_tile(y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        pred = problem.predict(pixel_centers(h, w, y0, y1), tile_pixels).reshape(y1 - y0, w, c)
        ref = target.rows(y0, y1)
        psnr.update(pred, ref)
        return pred, colormap(np.abs(pred - ref).mean(axis=2), vmax=error_vmax)

    def scaled_tile(y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        uv = pixel_centers(out_h, out_w, y0, y1)
        pred = problem.predict(uv, tile_pixels)
        ref = target.sample(torch.from_numpy(uv)).numpy()
        return (pred.reshape(y1 - y0, out_w, c),
                colormap(np.abs(pred - ref).mean(axis=1).reshape(y1 - y0, out_w), vmax=error_vmax))

    def score_tile(y0: int, y1: int) -> None:
        pred = problem.predict(pixel_centers(h, w, y0, y1), tile_pixels).reshape(y1 - y0, w, c)
        psnr.update(pred, target.rows(y0, y1))

    rows_per_tile = max(1, tile_pixels // w)
    if not native:
        spans = _spans(h, rows_per_tile)
        for t in range(world.rank, len(spans), world.size):
            score_tile(*spans[t])
    rows, width, tile = (h, w, native_tile) if native else (out_h, out_w, scaled_tile)
    spans = _spans(rows, max(1, tile_pixels // width))

    def shapes(y0: int, y1: int) -> list[tuple[tuple[int, ...], type]]:  # of a tile's (prediction, heat-map)
        return [((y1 - y0, width, c), np.float32), ((y1 - y0, width, 3), np.uint8)]

    if world.is_main:
        with ImageWriter(rec_path, rows, width, c, dtype) as rec, ImageWriter(err_path, rows, width, 3, np.uint8) as err:
            for y0, y1, (pred, heat) in shared_tiles(spans, tile, shapes, world):
                rec[y0:y1] = from_float(pred, dtype)
                err[y0:y1] = heat
    else:
        for _ in shared_tiles(spans, tile, shapes, world):
            pass
    sse, count = all_reduce_sum(torch.tensor([psnr.sse, float(psnr.count)], dtype=torch.float64), world).tolist()
    if not world.is_main:
        return None
    psnr.sse, psnr.count = sse, int(count)
    metrics = {"psnr": psnr.psnr, "mse": psnr.mse, "eval_s": round(time.perf_counter() - t0, 3),
               "width": w, "height": h, "channels": c}
    return metrics, {"reconstruction": str(rec_path), "error_map": str(err_path)}


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(y0, min(n, y0 + step)) for y0 in range(0, n, step)]


def record_max_resolution(cfg: ImageConfig, target: ImageTarget) -> None:
    """Derive N_max from the photo (``image.max_resolution_factor`` · max(W, H)) when the grid's scale is left open,
    and record it in ``cfg``, so config.yaml alone rebuilds the model (also on --resume)."""
    if cfg.encoding.is_grid and cfg.encoding.per_level_scale is None and cfg.encoding.max_resolution is None:
        cfg.encoding.max_resolution = target.natural_max_resolution(cfg.image.max_resolution_factor)


def load_target(cfg: ImageConfig, fresh: bool) -> ImageTarget:
    """The photo ``image.path`` (refused over ``image.max_pixels``); on a ``fresh`` run its N_max is recorded in
    ``cfg`` (:func:`record_max_resolution`). Raises DataError."""
    target = ImageTarget(read_image(Path(cfg.image.path), cfg.image.max_pixels))
    if fresh:
        record_max_resolution(cfg, target)
    return target


def error_vmax(mse: float) -> float:
    """Where the error heat-map saturates: 3 × the RMSE ``sqrt(mse)`` (normalised units), at least 1e-3."""
    return max(3.0 * math.sqrt(mse), 1e-3)


def final_evaluation(problem: ImageProblem, run: Any, state: TrainState) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`evaluate` into the run's renders, the heat-map saturating at 3x the last batch's RMSE; the metrics lead
    with the PSNR and add the training throughput."""
    last_mse = 10 ** (-(state.last or {}).get("psnr", 20.0) / 10) if state.last else 0.01
    cfg = problem.cfg
    result = evaluate(problem, Path(cfg.image.path), cfg.image.render_scale, cfg.image.tile_pixels, run.renders_dir,
                      error_vmax(last_mse), current_world())
    if result is None:  # a data-parallel process of rank > 0: it rendered its tiles, rank 0 writes
        return {}, {}
    metrics, artifacts = result
    samples_per_s = state.step * cfg.train.batch_size / max(state.elapsed_s, 1e-9)
    return {"psnr": metrics.pop("psnr"), "samples_per_s": samples_per_s, **metrics}, artifacts


def benchmark_step(backend: Backend, batch_size: int) -> Callable[[], Any]:
    """A closure running one training step of the image task (``ngp bench``'s ``train_step``): the bundled astronaut,
    the ``image-cpu`` preset with T=2^19, at ``batch_size``, on ``backend``."""
    from ngp_cli.config import resolve

    cfg = resolve(ImageConfig, "image", "image-cpu", ["encoding.log2_hashmap_size=19"], default_preset="image-cpu")
    target = ImageTarget(read_image(default_photo()))
    record_max_resolution(cfg, target)
    problem = ImageProblem(target, cfg, backend)
    optimizer = make_optimizer(problem.model, cfg.optimizer)
    loss_fn = make_loss(cfg.loss)
    generator = sampling_generator(cfg)
    return lambda: train_step(problem, optimizer, loss_fn, generator, batch_size)
