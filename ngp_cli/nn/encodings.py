"""Input encodings of tiny-cuda-nn, re-created in PyTorch: "HashGrid"/"DenseGrid", "Frequency", "SphericalHarmonics";
and "SimplexGrid" (Wen & Yang 2023), the hash grid on a simplex lattice.

The hash grid is the multiresolution hash encoding of Müller et al. 2022 (§3, Fig. 3), with tiny-cuda-nn's exact
conventions (``include/tiny-cuda-nn/encodings/grid.h``; level math and hashing live in :mod:`ngp_cli.nn.grid`).
Its forward and backward are hand-written (:class:`_HashGridFunction`): autograd through advanced indexing is two
orders of magnitude slower on CPU than one gather (``index_select``) plus one explicit scatter (``scatter_add_``).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ngp_cli.config import INTERPOLATIONS
from ngp_cli.errors import ConfigError
from ngp_cli.nn.grid import PRIMES, GridLevels, grid_index, grid_levels

__all__ = [
    "INTERPOLATIONS",
    "HashGridEncoding",
    "SimplexGridEncoding",
    "simplex_encode",
    "FrequencyEncoding",
    "SphericalHarmonicsEncoding",
]


_U32_MASK = 0xFFFFFFFF
# Points are processed in chunks of at most this many (level, corner, point) triples, bounding the temporaries
# (indices, weights, gathered features: ~16 bytes per triple for F = 2) to a few hundred MB. Measured: smaller
# chunks are slower, since every chunk's scatter sweeps the whole table again.
_CORNERS_PER_CHUNK = 1 << 23
# Above this many triples in one call, backward recomputes indices and weights instead of keeping them (~8 bytes
# per triple, plus 4*F more when dL/dx is needed).
_MAX_SAVED_CORNERS = 1 << 25
# Below this many corners the Python-thread split of gather/scatter costs more than it saves.
_MIN_CORNERS_FOR_THREADS = 1 << 18
_MAX_WORKERS = 8
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0


def _pool() -> ThreadPoolExecutor:
    global _POOL, _POOL_PID
    # A pool inherited through fork() has no live threads: start a new one in the child.
    if _POOL is None or _POOL_PID != os.getpid():
        _POOL = ThreadPoolExecutor(max_workers=_MAX_WORKERS - 1, thread_name_prefix="ngp-hashgrid")
        _POOL_PID = os.getpid()
    return _POOL


def _n_workers(n_corners: int, n_levels: int) -> int:
    if n_corners < _MIN_CORNERS_FOR_THREADS:
        return 1
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, _MAX_WORKERS, n_levels))


def _run_level_groups(fn, n_levels: int, n_workers: int) -> None:
    """Call ``fn(level)`` for every level in ``[0, n_levels)``, spread round-robin over ``n_workers`` threads.

    ``index_select`` and 1-D ``scatter_add_`` run single-threaded inside ATen but release the GIL, so splitting by
    level uses every core (round-robin balances cheap coarse levels against cache-missing fine ones). Each table
    row belongs to exactly one level, hence one worker: no write races and a deterministic summation order.
    Workers must only run such serial ops: ops with ATen intra-op parallelism would oversubscribe the cores.
    """
    if n_workers <= 1:
        for level in range(n_levels):
            fn(level)
        return

    def run(first: int) -> None:
        for level in range(first, n_levels, n_workers):
            fn(level)

    futures = [_pool().submit(run, i) for i in range(1, n_workers)]
    try:
        run(0)
    finally:
        for fut in futures:
            fut.result()


def _combine(parts: list[Tensor], op) -> Tensor:
    """Outer-combine per-dimension pairs ``(L, 2, n)`` into ``(L, 2**D, n)``; corner bit ``d`` is ``(c >> d) & 1``.

    Dimension 0 is the least significant bit, as in tcnn's ``for (idx = 0; idx < 1 << D; ++idx)`` corner loop, so
    corner contributions are summed in tcnn's order.
    """
    cur = parts[0]
    for p in parts[1:]:
        cur = op(p.unsqueeze(2), cur.unsqueeze(1)).flatten(1, 2)
    return cur


def _unit_dtype(dtype: torch.dtype, n_features: int) -> tuple[torch.dtype, int]:
    """Widest element type that packs whole features of one table row, and how many such units a row has.

    Gathering one 8- or 16-byte unit per corner instead of F separate floats roughly halves the gather time;
    complex units also let one scatter accumulate two features at once (complex addition is component-wise).
    """
    if dtype == torch.float32:
        if n_features == 1:
            return torch.float32, 1
        if n_features == 2:
            return torch.float64, 1
        return torch.complex128, n_features // 4
    if n_features == 1:
        return torch.float64, 1
    return torch.complex128, n_features // 2


def _scatter_unit_dtype(dtype: torch.dtype, n_features: int) -> tuple[torch.dtype, int]:
    if n_features == 1:
        return dtype, 1
    return (torch.complex64 if dtype == torch.float32 else torch.complex128), n_features // 2


class _Corners:
    """Table indices and interpolation weights of the ``2**D`` cell corners of every (level, point) pair.

    Attributes:
        idx: ``(L, C, n)`` int32/int64 global entry indices (level offsets included), ``C = 2**D`` (1 for Nearest).
        w: ``(L, C, n)`` interpolation weights in the compute dtype, or None for Nearest.
        frac: ``(L, D, n)`` fractional cell positions (before smoothstep), kept only when dL/dx is needed.
    """

    __slots__ = ("idx", "w", "frac")

    def __init__(self, idx: Tensor, w: Tensor | None, frac: Tensor | None) -> None:
        self.idx, self.w, self.frac = idx, w, frac


def _weight_pairs(frac: Tensor, interpolation: str) -> list[Tensor]:
    if interpolation == "Smoothstep":
        frac = frac * frac * (3.0 - 2.0 * frac)
    return [torch.stack((1.0 - frac[:, d], frac[:, d]), 1) for d in range(frac.shape[1])]


def _corners(enc: HashGridEncoding, x_t: Tensor, keep_frac: bool) -> _Corners:
    """Compute :class:`_Corners` for a chunk of points ``x_t`` of shape ``(D, n)`` (already in the compute dtype).

    Mirrors tcnn ``kernel_grid`` / ``pos_fract`` (grid.h): ``pos = fmaf(s_l, x, 0.5)``, ``pos_grid = floor(pos)``,
    ``frac = pos - pos_grid``, then ``grid_index`` of every corner.
    """
    c = enc._consts(x_t.device)
    n_levels, n_dims, n = enc.levels.n_levels, enc.n_input_dims, x_t.shape[1]
    if x_t.dtype == torch.float32:
        # float64 product of two float32 values is exact, so this rounds once like fmaf (up to rare double-rounding
        # ties), which matters for matching tcnn's cell choice at cell boundaries.
        pos = torch.addcmul(c["half64"], c["scales64"], x_t.double().unsqueeze(0)).float()
    else:
        pos = torch.addcmul(c["half64"], c["scales64"], x_t.unsqueeze(0))
    pos_grid = torch.floor(pos)
    frac = pos - pos_grid
    idx_dtype = c["idx_dtype"]
    pos_grid = pos_grid.to(idx_dtype)  # (L, D, n); int32 bits equal tcnn's (uint32_t)(int) cast

    nearest = enc.interpolation == "Nearest"
    n_corners = 1 if nearest else 1 << n_dims
    idx = torch.empty(n_levels, n_corners, n, dtype=idx_dtype, device=x_t.device)
    k = c["n_dense"]
    if k > 0:
        strides, size = c["strides"], c["dense_sizes"]  # (k, D, 1), (k, 1, 1)
        if _in_unit_cube(x_t):
            base = pos_grid[:k] * strides
            if nearest:
                local = base.sum(1, keepdim=True, dtype=idx_dtype)
            else:
                pairs = [torch.stack((base[:, d], base[:, d] + strides[:, d]), 1) for d in range(n_dims)]
                local = _combine(pairs, torch.add)
            # Coordinates lie in [0, r_l], so the row-major index is below 2 * level_size: one conditional
            # subtraction is the modulo.
            local = torch.where(local >= size, local - size, local)
        else:
            # Exact uint32 semantics of tcnn for inputs outside [0, 1] (negative or too large coordinates wrap).
            local = _dense_index_exact(pos_grid[:k], strides, size, nearest)
        torch.add(local, c["dense_offsets"], out=idx[:k])
    if k < n_levels:
        primes = c["primes"]  # (1, D, 1), int32 values carry the uint32 bit patterns
        h = pos_grid[k:] * primes
        if nearest:
            local = h[:, 0:1]
            for d in range(1, n_dims):
                local = local ^ h[:, d : d + 1]
        else:
            local = _combine(
                [torch.stack((h[:, d], h[:, d] + primes[:, d]), 1) for d in range(n_dims)], torch.bitwise_xor
            )
        # Hashed levels hold exactly T = 2**log2_hashmap_size entries, and T divides 2**32: modulo is a mask.
        local = local & c["hash_mask"]
        torch.add(local, c["hashed_offsets"], out=idx[k:])

    w = None if nearest else _combine(_weight_pairs(frac, enc.interpolation), torch.mul)
    return _Corners(idx, w, frac if (keep_frac and not nearest) else None)


def _in_unit_cube(x_t: Tensor) -> bool:
    if x_t.numel() == 0:
        return True
    lo, hi = torch.aminmax(x_t)
    return bool(lo >= 0) and bool(hi <= 1)


def _dense_index_exact(pos_grid: Tensor, strides: Tensor, size: Tensor, nearest: bool) -> Tensor:
    """Row-major dense index in uint32 arithmetic then ``% level_size`` (tcnn grid_index), for any coordinates."""
    pg = pos_grid.long()
    st = strides.long()
    base = pg * st
    if nearest:
        local = base.sum(1, keepdim=True)
    else:
        n_dims = pg.shape[1]
        local = _combine([torch.stack((base[:, d], base[:, d] + st[:, d]), 1) for d in range(n_dims)], torch.add)
    # int64 sums wrap modulo 2**64, so the low 32 bits are tcnn's uint32 sum.
    local = (local & _U32_MASK) % size.long()
    return local.to(pos_grid.dtype)


def _gather(enc: HashGridEncoding, params: Tensor, idx: Tensor, n_workers: int) -> Tensor:
    """Gather table rows for every corner: ``(L, C, n)`` indices -> ``(L, C, n, F)`` features (params dtype)."""
    n_levels, n_corners, n = idx.shape
    n_feat = params.shape[1]
    unit, n_units = _unit_dtype(params.dtype, n_feat)
    table = params.contiguous().view(unit)  # (E, n_units)
    if n_units == 1:
        table = table.view(-1)
        out = torch.empty(n_levels * n_corners * n, dtype=unit, device=params.device)
    else:
        out = torch.empty(n_levels * n_corners * n, n_units, dtype=unit, device=params.device)
    per_level = n_corners * n

    def work(level: int) -> None:
        torch.index_select(table, 0, idx[level].view(-1), out=out[level * per_level : (level + 1) * per_level])

    _run_level_groups(work, n_levels, n_workers)
    return out.view(params.dtype).view(n_levels, n_corners, n, n_feat)


def _interpolate(feats: Tensor, w: Tensor | None) -> Tensor:
    """``(L, C, n, F)`` features and ``(L, C, n)`` weights -> ``(L, n, F)`` (sum over corners, in corner order)."""
    if w is None:
        return feats[:, 0]
    out = feats[:, 0] * w[:, 0, :, None]
    for c in range(1, feats.shape[1]):
        out.addcmul_(feats[:, c], w[:, c, :, None])
    return out


def _scatter_params_grad(grad_table: Tensor, corners: _Corners, grad_l: Tensor, n_workers: int) -> None:
    """Accumulate dL/dtable: ``grad_table[idx[l, c, n]] += w[l, c, n] * grad_l[l, n, :]`` via 1-D ``scatter_add_``.

    ``grad_l`` is ``(L, n, F)`` contiguous; ``grad_table`` is ``(E, F)`` and updated in place.
    """
    idx, w = corners.idx, corners.w
    n_levels, n_corners, n = idx.shape
    n_feat = grad_table.shape[1]
    unit, n_units = _scatter_unit_dtype(grad_table.dtype, n_feat)
    dst = grad_table.view(unit)  # (E, n_units)

    # Build all sources here, with ATen's intra-op threads; the workers below only run the serial scatter loops
    # (mixing the two oversubscribes the cores).
    src = torch.empty(n_levels, n_corners, n, n_feat, dtype=grad_table.dtype, device=grad_table.device)
    for f in range(n_feat):
        if w is None:
            src[..., f].copy_(grad_l[:, None, :, f])
        else:
            # Writing each feature into a strided slice avoids a slow broadcast over the tiny F axis.
            torch.mul(w, grad_l[:, None, :, f], out=src[..., f])
    src_u = src.view(unit)
    idx64 = idx.long()  # scatter_add_ wants int64; its 1-D loop is ~1.5x faster than index_add_'s

    def work(level: int) -> None:
        flat_idx = idx64[level].view(-1)
        for u in range(n_units):
            dst[:, u].scatter_add_(0, flat_idx, src_u[level, ..., u].reshape(-1))

    _run_level_groups(work, n_levels, n_workers)


def _input_grad(enc: HashGridEncoding, corners: _Corners, feats: Tensor, grad_l: Tensor, scales: Tensor) -> Tensor:
    """dL/dx of one chunk, ``(n, D)``: tcnn's ``dy_dx`` (kernel_grid) contracted with ``grad_l`` ``(L, n, F)``.

    d out / d x_d = s_l * sum_c T[idx_c] * dw_c/dfrac_d, where the weight's factor for dimension ``d`` is replaced
    by ``+-S'(frac_d)`` (``S' = 1`` for Linear, ``6 f (1 - f)`` for Smoothstep).
    """
    frac = corners.frac
    n_levels, n_dims, n = frac.shape
    n_feat = feats.shape[-1]
    # g·T per corner, (L, C, n).
    gf = feats[..., 0] * grad_l[:, None, :, 0]
    for f in range(1, n_feat):
        gf.addcmul_(feats[..., f], grad_l[:, None, :, f])
    gf = gf.view((n_levels,) + (2,) * n_dims + (n,))  # axis 1 is dimension D-1, ..., axis D is dimension 0
    pairs = _weight_pairs(frac, enc.interpolation)
    if enc.interpolation == "Smoothstep":
        dsdf = 6.0 * frac * (1.0 - frac)
    else:
        dsdf = None
    grad_x = torch.empty(n, n_dims, dtype=frac.dtype, device=frac.device)
    for d in range(n_dims):
        axis = n_dims - d
        diff = gf.select(axis, 1) - gf.select(axis, 0)
        others = [pairs[e] for e in range(n_dims) if e != d]
        t = diff.reshape(n_levels, -1, n)
        if others:
            t = (t * _combine(others, torch.mul)).sum(1)
        else:
            t = t[:, 0]
        if dsdf is not None:
            t = t * dsdf[:, d]
        grad_x[:, d] = (t * scales[:, None]).sum(0)
    return grad_x


def _encode(enc: HashGridEncoding, x: Tensor, params: Tensor, need_x: bool, need_params: bool):
    """Forward pass over chunks of points; returns ``(out (N, L*F), saved, chunk)``.

    ``saved`` holds each chunk's :class:`_Corners` (and gathered features when dL/dx is needed) for a scatter-only
    backward, unless no gradient is needed or that would keep more than ``_MAX_SAVED_CORNERS`` corners alive.
    """
    n_points = x.shape[0]
    levels = enc.levels
    n_levels, n_feat = levels.n_levels, levels.n_features_per_level
    keep_frac = need_x and enc.interpolation != "Nearest"
    n_corners = 1 if enc.interpolation == "Nearest" else 1 << levels.n_dims
    chunk = max(1, _CORNERS_PER_CHUNK // (n_levels * n_corners))
    out = torch.empty(n_points, n_levels * n_feat, dtype=params.dtype, device=params.device)
    # tcnn reads float inputs: cast first, so float32 tables see float32 coordinates whatever x's dtype.
    x_t = x.detach().to(device=params.device, dtype=params.dtype).t()
    keep = (need_x or need_params) and n_points * n_levels * n_corners <= _MAX_SAVED_CORNERS
    saved: list = []
    for start in range(0, n_points, chunk):
        stop = min(start + chunk, n_points)
        corners = _corners(enc, x_t[:, start:stop], keep_frac)
        workers = _n_workers(corners.idx.numel(), n_levels)
        feats = _gather(enc, params, corners.idx, workers)
        res = _interpolate(feats, corners.w)  # (L, n, F)
        out[start:stop].view(stop - start, n_levels, n_feat).copy_(res.transpose(0, 1))
        if keep:
            saved.append((corners, feats if keep_frac else None))
    return out, saved, chunk


class _HashGridFunction(torch.autograd.Function):
    """Multiresolution grid lookup with a hand-written backward (gather forward, scatter backward).

    forward(x (N, D), params (E, F), enc) -> (N, L*F). Returns dL/dparams (params dtype) and dL/dx (x dtype) only
    when each is needed. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, enc: HashGridEncoding) -> Tensor:
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        out, saved, chunk = _encode(enc, x, params, need_x, need_params)
        ctx.enc = enc
        ctx.x_dtype = x.dtype
        ctx.chunk = chunk
        ctx.saved_corners = saved
        if need_x or need_params:
            ctx.save_for_backward(x, params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_params):
            return None, None, None
        x, params = ctx.saved_tensors
        enc: HashGridEncoding = ctx.enc
        levels = enc.levels
        n_levels, n_feat = levels.n_levels, levels.n_features_per_level
        n_points = x.shape[0]
        cdtype = params.dtype
        nearest = enc.interpolation == "Nearest"
        grad_out = grad_out.to(cdtype)
        grad_table = torch.zeros_like(params, memory_format=torch.contiguous_format) if need_params else None
        grad_x = None
        if need_x:
            grad_x = torch.zeros(n_points, levels.n_dims, dtype=cdtype, device=params.device)
        scales = enc._consts(params.device)["scales64"].view(-1).to(cdtype)
        x_t = x.detach().to(device=params.device, dtype=cdtype).t()
        chunk = ctx.chunk
        for i_chunk, start in enumerate(range(0, n_points, chunk)):
            stop = min(start + chunk, n_points)
            n = stop - start
            if ctx.saved_corners:
                corners, feats = ctx.saved_corners[i_chunk]
            else:
                corners = _corners(enc, x_t[:, start:stop], need_x)
                feats = None
            workers = _n_workers(corners.idx.numel(), n_levels)
            # (L, n, F) contiguous so per-feature slices are cheap to broadcast over corners.
            grad_l = grad_out[start:stop].reshape(n, n_levels, n_feat).transpose(0, 1).contiguous()
            if need_params:
                _scatter_params_grad(grad_table, corners, grad_l, workers)
            if need_x and not nearest:
                if feats is None:
                    feats = _gather(enc, params, corners.idx, workers)
                grad_x[start:stop] = _input_grad(enc, corners, feats, grad_l, scales)
        ctx.saved_corners = []
        if grad_x is not None:
            grad_x = grad_x.to(device=x.device, dtype=ctx.x_dtype)
        return grad_x, grad_table, None


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding (Müller et al. 2022, §3), tcnn "HashGrid" / "DenseGrid" semantics.

    For each level ``l`` the input is scaled by ``s_l = b**l * N_min - 1`` (float32), offset by 0.5 and floored to
    a grid cell; the ``2**D`` cell corners are looked up in the level's table (dense row-major index when the level
    fits in its entries, spatial hash otherwise, see :func:`ngp_cli.nn.grid.grid_index`) and d-linearly
    interpolated (paper Fig. 3 steps 1-3; tcnn ``include/tiny-cuda-nn/encodings/grid.h``).

    Args:
        n_input_dims: ``D``, 2..4.
        n_levels: ``L``.
        n_features_per_level: ``F`` in {1, 2, 4, 8}.
        log2_hashmap_size: ``log2(T)``.
        base_resolution: ``N_min``.
        per_level_scale: ``b`` (use :func:`ngp_cli.nn.grid.per_level_scale_from_max_resolution` for ``N_max``).
        interpolation: "Linear" (default), "Smoothstep" (weights ``f*f*(3-2f)``) or "Nearest".
        grid_type: "Hash" or "Dense".
        dtype: parameter dtype, torch.float32 or torch.float64 (float64 makes the whole computation float64).
        generator: optional ``torch.Generator`` for the ``U(-1e-4, 1e-4)`` initialisation (tcnn's default).
        device: where the table lives.
        kernel_target: None (default) runs the PyTorch implementation here; "cpu" or "cuda" runs the
            ``ngp_cli/cuda/hashgrid.cu`` kernels on that target (:func:`ngp_cli.cuda.hashgrid.encode`; the table must
            be on the matching device). Settable later through the attribute of the same name.
        kernel_dtype: table dtype the kernels read: None (the parameter dtype) or torch.float16, an fp16 copy of
            the parameters made in every forward (fp32 master weights; the output is then float16). Kernels only.

    Attributes:
        params: ``nn.Parameter`` of shape ``(n_entries, F)``; level ``l`` owns rows
            ``levels.offsets[l]:levels.offsets[l + 1]`` (same flat layout as tcnn's parameter buffer).
        levels: the :class:`~ngp_cli.nn.grid.GridLevels`.
        n_input_dims, n_output_dims: ``D`` and ``L * F``.
        kernel_target, kernel_dtype: as the arguments.

    Raises:
        ConfigError: invalid hyper-parameters (message names the tcnn key).
        ValueError: unsupported ``dtype``.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 2.0,
        interpolation: str = "Linear",
        grid_type: str = "Hash",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        kernel_target: str | None = None,
        kernel_dtype: torch.dtype | None = None,
        *,
        lattice: str = "cubic",
    ) -> None:
        super().__init__()
        if kernel_target not in (None, "cpu", "cuda"):
            raise ValueError(f"kernel_target must be None, 'cpu' or 'cuda', got {kernel_target!r}")
        if kernel_dtype not in (None, torch.float16):
            raise ValueError(f"kernel_dtype must be None or torch.float16, got {kernel_dtype}")
        self.kernel_target = kernel_target
        self.kernel_dtype = kernel_dtype
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"encoding.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
            )
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"HashGridEncoding dtype must be torch.float32 or torch.float64, got {dtype}")
        self.levels: GridLevels = grid_levels(
            n_input_dims, n_levels, n_features_per_level, log2_hashmap_size, base_resolution, per_level_scale, grid_type,
            lattice,
        )
        self.n_input_dims = self.levels.n_dims
        self.n_output_dims = self.levels.n_levels * self.levels.n_features_per_level
        self.interpolation = interpolation
        shape = (self.levels.n_entries, self.levels.n_features_per_level)
        init = torch.rand(
            shape, generator=generator, dtype=dtype, device="cpu" if generator is None else generator.device
        )
        self.params = nn.Parameter((init * 2e-4 - 1e-4).to(device))
        self._const_cache: dict = {}

    def __getstate__(self):
        # Per-device constants are derived data: rebuild them after unpickling rather than storing them.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_const_cache"] = {}
        return state

    def extra_repr(self) -> str:
        lv = self.levels
        return (
            f"n_input_dims={lv.n_dims}, n_levels={lv.n_levels}, n_features_per_level={lv.n_features_per_level}, "
            f"log2_hashmap_size={lv.log2_hashmap_size}, base_resolution={lv.base_resolution}, "
            f"per_level_scale={lv.per_level_scale:g}, interpolation={self.interpolation!r}, "
            f"grid_type={lv.grid_type!r}, n_params={lv.n_params}"
        )

    def _consts(self, device: torch.device) -> dict:
        """Per-level constants on ``device``, built once per device (nothing is rebuilt per call)."""
        key = str(device)
        c = self._const_cache.get(key)
        if c is not None:
            return c
        lv = self.levels
        k = sum(1 for h in lv.hashed if not h)
        assert all(not h for h in lv.hashed[:k]) and all(lv.hashed[k:]), "resolutions grow with level (b >= 1)"
        # int32 index math is exact while every intermediate stays below 2**31 (see _corners), ~2x faster than int64.
        idx_dtype = torch.int32 if lv.n_entries < (1 << 30) else torch.int64
        res = torch.tensor(lv.resolutions[:k], dtype=torch.int64)
        strides = torch.stack([res**d for d in range(lv.n_dims)], -1).view(k, lv.n_dims, 1)
        sizes = [lv.level_size(i) for i in range(lv.n_levels)]

        def as_signed32(v: int) -> int:
            v &= _U32_MASK
            return v - (1 << 32) if v >= (1 << 31) else v

        primes = [as_signed32(p) if idx_dtype == torch.int32 else p for p in PRIMES[: lv.n_dims]]

        c = {
            "idx_dtype": idx_dtype,
            "n_dense": k,
            "scales64": torch.tensor(lv.scales, dtype=torch.float64, device=device).view(-1, 1, 1),
            "half64": torch.tensor(0.5, dtype=torch.float64, device=device),
            "strides": strides.to(device=device, dtype=idx_dtype),
            "dense_sizes": torch.tensor(sizes[:k], dtype=idx_dtype, device=device).view(-1, 1, 1),
            "dense_offsets": torch.tensor(lv.offsets[:k], dtype=idx_dtype, device=device).view(-1, 1, 1),
            "hashed_offsets": torch.tensor(lv.offsets[k : lv.n_levels], dtype=idx_dtype, device=device).view(-1, 1, 1),
            "primes": torch.tensor(primes, dtype=idx_dtype, device=device).view(1, -1, 1),
            "hash_mask": (1 << lv.log2_hashmap_size) - 1,
        }
        self._const_cache[key] = c
        return c

    def forward(self, x: Tensor, params: Tensor | None = None, feature_major: bool = False) -> Tensor:
        """Encode points.

        Args:
            x: ``(N, D)`` float32 or float64 positions in ``[0, 1]^D`` (values outside wrap around like tcnn's
                uint32 coordinates). Cast to the parameter dtype first, as tcnn casts to float.
            params: the table to read instead of :attr:`params` (same shape and dtype; gradients flow to it), e.g.
                a function of them (the saliency mask's clamped and masked values).
            feature_major: a layout hint for the kernels (:func:`ngp_cli.cuda.hashgrid.encode`): the same values
                in an (L * F, N) buffer, returned transposed (differentiable, in either layout of the incoming
                gradient). Ignored by the reference.

        Returns:
            ``(N, L * F)`` in the parameter dtype, level-major: ``out[:, l * F + f]``.

        Raises:
            ValueError: ``x`` not of shape ``(N, D)`` or not floating point.
        """
        if x.dim() != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"HashGridEncoding expects x of shape (N, {self.n_input_dims}), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"HashGridEncoding expects floating-point x, got {x.dtype}")
        if self.params.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"HashGridEncoding params must be float32 or float64, got {self.params.dtype}")
        table = self.params if params is None else params
        if table.shape != self.params.shape or table.dtype != self.params.dtype:
            raise ValueError(f"HashGridEncoding params override must be {tuple(self.params.shape)} "
                             f"{self.params.dtype}, got {tuple(table.shape)} {table.dtype}")
        target = getattr(self, "kernel_target", None)
        if target is not None:
            from ngp_cli.cuda.hashgrid import encode

            if getattr(self, "kernel_dtype", None) is not None:
                table = table.to(self.kernel_dtype)
            return encode(x, table, self.levels, self.interpolation, target, feature_major)
        return self._reference(x, table)

    def _reference(self, x: Tensor, params: Tensor) -> Tensor:
        """The PyTorch implementation of :meth:`forward` (``kernel_target`` None) on the table ``params``."""
        if not torch.is_grad_enabled() or not (x.requires_grad or params.requires_grad):
            # Inference: skip autograd and keep nothing for a backward that will not come.
            return _encode(self, x, params.detach(), False, False)[0]
        return _HashGridFunction.apply(x, params, self)


def simplex_encode(x: Tensor, params: Tensor, levels: GridLevels) -> Tensor:
    """The SimplexGrid encoding in plain PyTorch (the reference of ``hashgrid.cu``'s "Simplex" variant), autograd
    through it: differentiable w.r.t. ``params`` and ``x`` to any order (its second derivative in ``x`` is zero).

    Per level ``l`` (Wen & Yang 2023, arXiv:2311.15439 §3; the skew of Perlin's simplex noise):
    ``p = s_l x + 0.5`` (one rounding, as ``fmaf``), skewed to ``p' = p + K_D Σ_d p_d`` with
    ``K_D = (sqrt(D + 1) - 1) / D``; ``frac = p' - floor(p')`` sorted decreasingly (ties: lower dimension first) as
    ``frac[o_0] >= ... >= frac[o_{D-1}]`` picks the Kuhn simplex of the cube cell, whose ``D + 1`` vertices
    ``v_0 = floor(p')``, ``v_k = v_{k-1} + e_{o_{k-1}}`` are looked up like grid corners
    (:func:`~ngp_cli.nn.grid.grid_index`) and weighted barycentrically: ``w_0 = 1 - frac[o_0]``,
    ``w_k = frac[o_{k-1}] - frac[o_k]``, ``w_D = frac[o_{D-1}]``.

    Args:
        x: ``(N, D)`` floating-point positions in ``[0, 1]^D``; cast to the params dtype.
        params: ``(levels.n_entries, F)`` float32 or float64 table.
        levels: :class:`~ngp_cli.nn.grid.GridLevels` of the simplex lattice (``lattice="simplex"``).

    Returns:
        ``(N, L * F)`` in the params dtype, level-major.
    """
    n_dims = levels.n_dims
    dtype = params.dtype
    xs = x.to(device=params.device, dtype=dtype)
    skew = torch.tensor((math.sqrt(n_dims + 1) - 1) / n_dims, dtype=dtype, device=params.device)
    steps = torch.eye(n_dims, dtype=torch.int64, device=params.device)
    outs = []
    for level in range(levels.n_levels):
        scale = levels.scales[level]
        # fmaf: the float64 product of two float32 values is exact, so this rounds once (as _corners does).
        p = (xs.double() * scale + 0.5).to(dtype) if dtype == torch.float32 else xs * scale + 0.5
        total = p[:, 0]
        for d in range(1, n_dims):
            total = total + p[:, d]
        if dtype == torch.float32:  # fmaf(sum, K_D, p), as the kernel: one rounding of the exact float64 value
            skewed = (p.double() + (total.double() * skew.double())[:, None]).to(dtype)
        else:
            skewed = p + (total * skew)[:, None]
        base = torch.floor(skewed.detach())
        frac = skewed - base
        order = torch.argsort(-frac.detach(), dim=1, stable=True)
        fs = frac.gather(1, order)
        w = torch.cat([1.0 - fs[:, :1], fs[:, :-1] - fs[:, 1:], fs[:, -1:]], 1)  # (N, D + 1)
        walk = torch.cat([torch.zeros_like(steps[order[:, :1]]), steps[order].cumsum(1)], 1)  # (N, D + 1, D)
        coords = base.to(torch.int64)[:, None, :] + walk
        idx = grid_index(coords, levels.resolutions[level], levels.level_size(level), levels.hashed[level])
        feats = params[idx + levels.offsets[level]]  # (N, D + 1, F)
        outs.append((w[..., None] * feats).sum(1))
    return torch.cat(outs, 1)


class SimplexGridEncoding(HashGridEncoding):
    """Multiresolution hash encoding on a simplex lattice, ``otype: "SimplexGrid"`` (Wen & Yang 2023, "Efficient
    Encoding of Graphics Primitives with Simplex-based Structures", arXiv:2311.15439): each level interpolates the
    ``D + 1`` vertices of the simplex around the point instead of the ``2**D`` corners of its cube (4 table reads
    per level in 3-D instead of 8), with the hash grid's keys, tables, hash and level scales ``s_l``
    (:func:`simplex_encode` gives the scheme; the lattice's dense levels are larger, :func:`~ngp_cli.nn.grid.grid_levels`).

    The same arguments, attributes and kernels as :class:`HashGridEncoding` (the ``hashgrid.cu`` variant
    ``INTERPOLATION=3``), less ``interpolation`` (barycentric; ``self.interpolation`` is ``"Simplex"``).

    Raises:
        ConfigError: ``n_input_dims`` outside 2..4, or invalid grid hyper-parameters.
    """

    def __init__(self, n_input_dims: int, n_levels: int = 16, n_features_per_level: int = 2,
                 log2_hashmap_size: int = 19, base_resolution: int = 16, per_level_scale: float = 2.0,
                 grid_type: str = "Hash", dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 kernel_target: str | None = None, kernel_dtype: torch.dtype | None = None) -> None:
        if isinstance(n_input_dims, bool) or not isinstance(n_input_dims, int) or not 2 <= n_input_dims <= 4:
            raise ConfigError(f"encoding.otype SimplexGrid encodes 2 to 4 input dimensions, got {n_input_dims!r}")
        super().__init__(n_input_dims, n_levels, n_features_per_level, log2_hashmap_size, base_resolution,
                         per_level_scale, "Linear", grid_type, dtype, generator, device, kernel_target, kernel_dtype,
                         lattice="simplex")
        self.interpolation = "Simplex"

    def _reference(self, x: Tensor, params: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not (x.requires_grad or params.requires_grad):
            with torch.no_grad():
                return simplex_encode(x, params, self.levels)
        return simplex_encode(x, params, self.levels)


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding, tcnn "Frequency" (``include/tiny-cuda-nn/encodings/frequency.h``).

    Output ``j`` (of ``D * n_frequencies * 2``) encodes input dimension ``j // (2 * n_frequencies)`` at log2
    frequency ``k = (j // 2) % n_frequencies`` with phase ``(j % 2) * pi / 2``: ``sin(x * 2**k * pi + phase)``, i.e.
    ``sin, cos`` pairs of increasing frequency per dimension. Inputs are used as given (no rescaling).

    Args:
        n_input_dims: ``D >= 1``.
        n_frequencies: ``>= 1``.

    Raises:
        ConfigError: non-positive ``n_input_dims`` or ``n_frequencies``.
    """

    def __init__(self, n_input_dims: int, n_frequencies: int = 12) -> None:
        super().__init__()
        if isinstance(n_input_dims, bool) or not isinstance(n_input_dims, int) or n_input_dims < 1:
            raise ConfigError(f"encoding.n_dims_to_encode must be a positive integer, got {n_input_dims!r}")
        if isinstance(n_frequencies, bool) or not isinstance(n_frequencies, int) or n_frequencies < 1:
            raise ConfigError(f"encoding.n_frequencies must be a positive integer, got {n_frequencies!r}")
        self.n_input_dims = n_input_dims
        self.n_frequencies = n_frequencies
        self.n_output_dims = n_input_dims * n_frequencies * 2

    def extra_repr(self) -> str:
        return f"n_input_dims={self.n_input_dims}, n_frequencies={self.n_frequencies}"

    def forward(self, x: Tensor) -> Tensor:
        """``(N, D)`` float tensor -> ``(N, D * n_frequencies * 2)`` of the same dtype (differentiable)."""
        if x.dim() != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"FrequencyEncoding expects x of shape (N, {self.n_input_dims}), got {tuple(x.shape)}")
        freqs = torch.exp2(torch.arange(self.n_frequencies, dtype=x.dtype, device=x.device))  # exact like scalbnf
        pi = float(np.float32(math.pi)) if x.dtype == torch.float32 else math.pi  # tcnn's PI is a float constant
        phase = torch.tensor([0.0, math.pi / 2], dtype=x.dtype, device=x.device)
        arg = (x.unsqueeze(-1) * freqs * pi).unsqueeze(-1) + phase  # (N, D, n_freq, 2)
        return torch.sin(arg).reshape(x.shape[0], self.n_output_dims)


# Real SH constants of tcnn's kernel_sh (scripts/gen_sh.py there), with its sign convention.
_C0 = 0.28209479177387814
_C1 = 0.48860251190291987
_C2 = (1.0925484305920792, 0.94617469575755997, 0.31539156525251999, 0.54627421529603959)
_C3 = (0.59004358992664352, 2.8906114426405538, 0.45704579946446572, 0.3731763325901154, 1.4453057213202769)


class SphericalHarmonicsEncoding(nn.Module):
    """Real spherical harmonics of a direction, tcnn "SphericalHarmonics"
    (``include/tiny-cuda-nn/encodings/spherical_harmonics.h``).

    Directions are given in ``[0, 1]^3`` as tcnn expects: ``(x, y, z) = 2 * input - 1`` should be a unit vector.
    Outputs are the ``degree**2`` basis functions of bands ``0 .. degree - 1`` in tcnn's order and signs:
    ``0.28209479177387814, -0.48860251190291987*y, 0.48860251190291987*z, -0.48860251190291987*x, ...``
    (orthonormal on the unit sphere).

    Args:
        n_input_dims: must be 3.
        degree: 1..4 (tcnn supports up to 8; higher bands are not implemented here).

    Raises:
        ConfigError: ``n_input_dims != 3`` or ``degree`` outside 1..4.
    """

    def __init__(self, n_input_dims: int = 3, degree: int = 4) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ConfigError(f"encoding.n_dims_to_encode must be 3 for SphericalHarmonics, got {n_input_dims!r}")
        if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= 4:
            raise ConfigError(f"encoding.degree must be an integer in 1..4, got {degree!r}")
        self.n_input_dims = 3
        self.degree = degree
        self.n_output_dims = degree * degree

    def extra_repr(self) -> str:
        return f"degree={self.degree}"

    def forward(self, d: Tensor) -> Tensor:
        """``(N, 3)`` float directions in ``[0, 1]^3`` -> ``(N, degree**2)`` of the same dtype (differentiable)."""
        if d.dim() != 2 or d.shape[1] != 3:
            raise ValueError(f"SphericalHarmonicsEncoding expects x of shape (N, 3), got {tuple(d.shape)}")
        x, y, z = (d * 2.0 - 1.0).unbind(-1)
        out = [torch.full_like(x, _C0)]
        if self.degree > 1:
            out += [-_C1 * y, _C1 * z, -_C1 * x]
        if self.degree > 2:
            xy, yz, xz, x2, y2, z2 = x * y, y * z, x * z, x * x, y * y, z * z
            out += [
                _C2[0] * xy,
                -_C2[0] * yz,
                _C2[1] * z2 - _C2[2],
                -_C2[0] * xz,
                _C2[3] * x2 - _C2[3] * y2,
            ]
        if self.degree > 3:
            out += [
                _C3[0] * y * (-3.0 * x2 + y2),
                _C3[1] * xy * z,
                _C3[2] * y * (1.0 - 5.0 * z2),
                _C3[3] * z * (5.0 * z2 - 3.0),
                _C3[2] * x * (1.0 - 5.0 * z2),
                _C3[4] * z * (x2 - y2),
                _C3[0] * x * (-x2 + 3.0 * y2),
            ]
        return torch.stack(out, -1)
