"""The multiresolution hash-grid encoding on the ``cuda`` and ``cpu`` kernel targets (``hashgrid.cu``).

Same semantics as the PyTorch reference :class:`ngp_cli.nn.encodings.HashGridEncoding` (tiny-cuda-nn's
``encodings/grid.h``): per-level scales, resolutions, offsets and hashed flags come from
:class:`ngp_cli.nn.grid.GridLevels` and are passed to the kernels as small tensors, so both pick the same cells.

Differentiable twice: the backward is itself an autograd Function whose backward runs the double-backward kernels,
so ``torch.autograd.grad(out, x, grad_out, create_graph=True)`` (SDF normals, eikonal losses) can be differentiated
w.r.t. the table, ``grad_out`` and ``x``. Third derivatives are not supported.

Memory is allocated by torch and handed to the kernels zero-copy; module variants are compiled once per process
(cached on disk) through :func:`ngp_cli.cuda.runtime.load_module`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ngp_cli.nn.grid import GridLevels

__all__ = ["encode", "module_defines", "INTERPOLATION_CODES"]

#: INTERPOLATION define of each interpolation name ("Simplex": the SimplexGrid encoding, on GridLevels of the simplex
#: lattice).
INTERPOLATION_CODES = {"Linear": 0, "Smoothstep": 1, "Nearest": 2, "Simplex": 3}

_PARAM_T = {torch.float32: "float", torch.float16: "__half", torch.float64: "double"}
_GPU_BLOCK = 128
# CPU launches: one emulated thread walks this many consecutive points of a level (its loop prefetches table rows
# a few points ahead); the grid is split into at least _CPU_MIN_CHUNKS pieces per level so that every worker has work.
_CPU_POINTS_PER_THREAD = 4096
_CPU_MIN_CHUNKS = 8

_CONSTS: dict = {}


def module_defines(n_dims: int, n_features: int, param_dtype: torch.dtype, interpolation: str) -> dict:
    """The ``defines`` of the ``hashgrid.cu`` variant for these template parameters.

    Raises:
        ValueError: unsupported dtype, dimension count, feature count or interpolation.
    """
    if param_dtype not in _PARAM_T:
        raise ValueError(f"hash-grid kernels support float32, float16 and float64 tables, got {param_dtype}")
    if n_dims not in (2, 3, 4):
        raise ValueError(f"hash-grid kernels support 2, 3 or 4 input dimensions, got {n_dims}")
    if n_features not in (1, 2, 4, 8):
        raise ValueError(f"hash-grid kernels support 1, 2, 4 or 8 features per level, got {n_features}")
    if interpolation not in INTERPOLATION_CODES:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATION_CODES)}, got {interpolation!r}")
    return {
        "N_DIMS": n_dims,
        "N_FEATURES": n_features,
        "PARAM_T": _PARAM_T[param_dtype],
        "POS_T": "double" if param_dtype == torch.float64 else "float",
        "INTERPOLATION": INTERPOLATION_CODES[interpolation],
    }


def _pos_dtype(param_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def _level_consts(levels: GridLevels, device: torch.device, pos_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``scales`` (L,) in the position dtype (float32 values) and ``level_meta`` (L, 4) uint32 bits in int32:
    ``{offset, size, resolution, hashed}`` per level. Built once per (levels, device, dtype)."""
    key = (levels, str(device), pos_dtype)
    c = _CONSTS.get(key)
    if c is None:
        meta = np.zeros((levels.n_levels, 4), dtype=np.uint32)
        for lv in range(levels.n_levels):
            meta[lv] = (levels.offsets[lv], levels.level_size(lv), levels.resolutions[lv], int(levels.hashed[lv]))
        scales = torch.tensor(levels.scales, dtype=pos_dtype, device=device)
        c = (scales, torch.from_numpy(meta.view(np.int32)).to(device))
        if len(_CONSTS) > 64:
            _CONSTS.clear()
        _CONSTS[key] = c
    return c


class _Spec:
    """What a launch needs besides tensors: the levels, the interpolation and the target."""

    __slots__ = ("levels", "interpolation", "target")

    def __init__(self, levels: GridLevels, interpolation: str, target: str) -> None:
        self.levels, self.interpolation, self.target = levels, interpolation, target

    @property
    def nearest(self) -> bool:
        return self.interpolation == "Nearest"


def _module(spec: _Spec, param_dtype: torch.dtype):
    from ngp_cli.cuda.runtime import load_module

    lv = spec.levels
    return load_module(
        "hashgrid.cu", spec.target, module_defines(lv.n_dims, lv.n_features_per_level, param_dtype, spec.interpolation)
    )


def _launch(
    spec: _Spec, param_dtype: torch.dtype, kernel: str, n: int, args: list, level_major: bool, scatter: bool
) -> None:
    """Launch ``kernel`` over ``n`` points; ``level_major`` puts the levels on blockIdx.y."""
    n_levels = spec.levels.n_levels
    gy = n_levels if level_major else 1
    if spec.target == "cuda":
        ppt = 1
        grid, block = ((n + _GPU_BLOCK - 1) // _GPU_BLOCK, gy, 1), (_GPU_BLOCK, 1, 1)
    else:
        if kernel == "hashgrid_backward_params":
            # One emulated thread per level (it zeroes its level's gradient rows, then scatters every point into
            # them); the 16 equally expensive levels are dealt out to the workers row by row (exclusive_y).
            ppt = n
        else:
            ppt = min(_CPU_POINTS_PER_THREAD, max(1, math.ceil(n / _CPU_MIN_CHUNKS)))
        grid, block = ((n + ppt - 1) // ppt, gy, 1), (1, 1, 1)
    args = args + [np.uint32(n), np.uint32(n_levels), np.uint32(ppt)]
    mod = _module(spec, param_dtype)
    if spec.target == "cuda":
        mod.launch(kernel, grid=grid, block=block, args=args)
    else:
        mod.launch(kernel, grid=grid, block=block, args=args, exclusive_y=scatter)


def _prep_x(x: Tensor, param_dtype: torch.dtype, device: torch.device) -> Tensor:
    return x.detach().to(device=device, dtype=_pos_dtype(param_dtype)).contiguous()


def _forward(spec: _Spec, x: Tensor, params: Tensor, feature_major: bool = False) -> Tensor:
    """out (N, L*F) in the params dtype; ``x`` already prepared (contiguous, position dtype). ``feature_major``: the
    kernel writes an (L*F, N) buffer and out is its transpose (a view with strides (1, N))."""
    lv = spec.levels
    n, width = x.shape[0], lv.n_levels * lv.n_features_per_level
    shape = (width, n) if feature_major else (n, width)
    out = torch.empty(shape, dtype=params.dtype, device=params.device)
    if n:
        scales, meta = _level_consts(lv, params.device, x.dtype)
        _launch(spec, params.dtype, "hashgrid_forward", n,
                [x, scales, meta, params, out, np.uint32(feature_major)], True, False)
    return out.t() if feature_major else out


def is_feature_major(t: Tensor) -> bool:
    """Whether the (N, C) tensor ``t`` lies feature-major: its transpose is contiguous and it is not (the layout of
    :func:`encode` with ``feature_major``, and of the gradients the cpu MLP returns for it). False for 1-row or
    1-column tensors, which are contiguous either way."""
    return t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()


def _grad_layout(grad_out: Tensor) -> tuple[Tensor, bool]:
    """``(buffer, feature_major)``: ``grad_out`` (N, L*F) as the backward kernels read it, its contiguous (L*F, N)
    transpose when it lies feature-major (the gradient of a feature-major output, e.g. ``torch.ones_like`` of it),
    else row-major (a copy when it is neither)."""
    if is_feature_major(grad_out):
        return grad_out.t(), True
    return grad_out.contiguous(), False


def _backward_params(spec: _Spec, x: Tensor, grad_out: Tensor, like: Tensor) -> Tensor:
    n = x.shape[0]
    if not n:
        return torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    scales, meta = _level_consts(spec.levels, like.device, x.dtype)
    # CPU: the kernel zeroes each level's rows itself right before scattering into them (cache-hot), instead of a
    # separate torch.zeros pass over the whole table (tens of MB) that the scatter would then read back from memory.
    zero_in_kernel = spec.target == "cpu"
    alloc = torch.empty if zero_in_kernel else torch.zeros
    grad_params = alloc(like.shape, dtype=like.dtype, device=like.device)
    g, feature_major = _grad_layout(grad_out)
    _launch(
        spec,
        like.dtype,
        "hashgrid_backward_params",
        n,
        [x, scales, meta, g, np.uint32(feature_major), grad_params, np.uint32(zero_in_kernel)],
        True,
        True,
    )
    return grad_params


def _backward_input(spec: _Spec, x: Tensor, params: Tensor, grad_out: Tensor) -> Tensor:
    """dL/dx (N, D) in the position dtype: per-level contributions (level-major kernel), summed over levels."""
    lv = spec.levels
    n = x.shape[0]
    if not n:
        return torch.zeros(0, lv.n_dims, dtype=x.dtype, device=x.device)
    per_level = torch.empty(lv.n_levels, n, lv.n_dims, dtype=x.dtype, device=x.device)
    scales, meta = _level_consts(lv, params.device, x.dtype)
    g, feature_major = _grad_layout(grad_out)
    _launch(spec, params.dtype, "hashgrid_backward_input", n,
            [x, scales, meta, params, g, np.uint32(feature_major), per_level], True, False)
    return per_level.sum(0)


def _check(x: Tensor, params: Tensor, levels: GridLevels, interpolation: str, target: str) -> None:
    if target not in ("cpu", "cuda"):
        raise ValueError(f"target must be 'cpu' or 'cuda', got {target!r}")
    if x.dim() != 2 or x.shape[1] != levels.n_dims:
        raise ValueError(f"hash-grid encode expects x of shape (N, {levels.n_dims}), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"hash-grid encode expects floating-point x, got {x.dtype}")
    shape = (levels.n_entries, levels.n_features_per_level)
    if tuple(params.shape) != shape:
        raise ValueError(f"hash-grid encode expects params of shape {shape}, got {tuple(params.shape)}")
    module_defines(levels.n_dims, levels.n_features_per_level, params.dtype, interpolation)
    if (interpolation == "Simplex") != (levels.lattice == "simplex"):
        raise ValueError(f"interpolation {interpolation!r} does not go with levels of the {levels.lattice} lattice")
    want = "cuda" if target == "cuda" else "cpu"
    if params.device.type != want:
        raise ValueError(f"target {target!r} needs params on a {want} device, got {params.device}")
    if x.shape[0] >= 2**32:
        raise ValueError(f"hash-grid encode supports fewer than 2**32 points, got {x.shape[0]}")


class _HashGridFn(torch.autograd.Function):
    """forward(x, params, spec, feature_major) -> out (N, L*F) (a transposed view of an (L*F, N) buffer when
    ``feature_major``); backward through :class:`_HashGridBackwardFn` (differentiable), in either layout of
    ``grad_out``."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, spec: _Spec, feature_major: bool) -> Tensor:
        params_c = params.contiguous()
        out = _forward(spec, _prep_x(x, params.dtype, params.device), params_c, feature_major)
        ctx.spec = spec
        ctx.save_for_backward(x, params_c)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, params = ctx.saved_tensors
        need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_p):
            return None, None, None, None
        grad_x, grad_params = _HashGridBackwardFn.apply(grad_out, x, params, ctx.spec, need_x, need_p)
        return grad_x, grad_params, None, None


class _HashGridBackwardFn(torch.autograd.Function):
    """forward(grad_out, x, params, spec, need_x, need_params) -> (dL/dx or None, dL/dparams or None).

    Its backward (the encoding's second derivatives) takes ``ggx = dL/d(dL/dx)`` and ``ggp = dL/d(dL/dparams)``:

    - from ``ggx``: dL/dgrad_out and dL/dparams (``hashgrid_backward_backward``, tcnn's backward_backward_input),
      dL/dx (``hashgrid_backward_backward_input``, which tcnn leaves out);
    - from ``ggp`` (dL/dparams is linear in grad_out and does not depend on params): dL/dgrad_out is the encoding
      of the table ``ggp``, dL/dx the input gradient of that encoding.
    """

    @staticmethod
    def forward(ctx, grad_out: Tensor, x: Tensor, params: Tensor, spec: _Spec, need_x: bool, need_p: bool):
        g = grad_out.to(params.dtype)  # either layout (_grad_layout); the second-order kernels take rows
        xp = _prep_x(x, params.dtype, params.device)
        grad_x = grad_params = None
        if need_x:
            if spec.nearest:
                grad_x = torch.zeros(xp.shape, dtype=xp.dtype, device=xp.device)
            else:
                grad_x = _backward_input(spec, xp, params, g)
            grad_x = grad_x.to(device=x.device, dtype=x.dtype)
        if need_p:
            grad_params = _backward_params(spec, xp, g, params)
        ctx.spec = spec
        ctx.out_dtype = grad_out.dtype
        ctx.save_for_backward(g, x, params)
        return grad_x, grad_params

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx: Tensor | None, ggp: Tensor | None):
        g, x, params = ctx.saved_tensors
        g = g.contiguous()
        spec: _Spec = ctx.spec
        need_g, need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        d_g = d_x = d_p = None
        xp = _prep_x(x, params.dtype, params.device)
        n = xp.shape[0]
        scales, meta = _level_consts(spec.levels, params.device, xp.dtype)
        if ggx is not None and not spec.nearest and n and (need_g or need_p or need_x):
            v = ggx.to(device=params.device, dtype=xp.dtype).contiguous()
            if need_g or need_p:
                d_g = torch.empty_like(g) if need_g else None
                d_p = torch.zeros_like(params) if need_p else None
                _launch(
                    spec,
                    params.dtype,
                    "hashgrid_backward_backward",
                    n,
                    [xp, scales, meta, params, g, v, d_p, d_g],
                    True,
                    need_p,
                )
            if need_x and spec.interpolation == "Simplex":
                d_x = torch.zeros_like(xp)  # piecewise linear in x: no second derivative
            elif need_x:
                d_x = torch.empty_like(xp)
                _launch(
                    spec,
                    params.dtype,
                    "hashgrid_backward_backward_input",
                    n,
                    [xp, scales, meta, params, g, v, d_x],
                    False,
                    False,
                )
        if ggp is not None and (need_g or need_x):
            ggp = ggp.to(params.dtype).contiguous()
            if need_g:
                enc = _forward(spec, xp, ggp)
                d_g = enc if d_g is None else d_g + enc
            if need_x and not spec.nearest:
                gx = _backward_input(spec, xp, ggp, g)
                d_x = gx if d_x is None else d_x + gx
        if d_g is not None:
            d_g = d_g.to(ctx.out_dtype)
        if d_x is not None:
            d_x = d_x.to(device=x.device, dtype=x.dtype)
        elif need_x:
            d_x = torch.zeros_like(x)
        if need_g and d_g is None:
            d_g = torch.zeros(g.shape, dtype=ctx.out_dtype, device=g.device)
        if need_p and d_p is None:
            d_p = torch.zeros_like(params)
        return d_g, d_x, d_p, None, None, None


def encode(x: Tensor, params: Tensor, levels: GridLevels, interpolation: str = "Linear", target: str = "cpu",
           feature_major: bool = False) -> Tensor:
    """Multiresolution grid encoding of points with the ``hashgrid.cu`` kernels (differentiable twice).

    Semantics are those of :class:`ngp_cli.nn.encodings.HashGridEncoding` (tcnn ``encodings/grid.h``; Müller et al.
    2022, §3): level ``l`` scales ``x`` by ``levels.scales[l]``, offsets by 0.5, floors to a cell and d-linearly
    interpolates the table rows of its ``2**D`` corners (dense row-major index or spatial hash, see
    :func:`ngp_cli.nn.grid.grid_index`). Inputs outside ``[0, 1]^D`` wrap around like tcnn's uint32 coordinates.

    Args:
        x: ``(N, D)`` floating-point positions (any float dtype; cast to float32, or float64 for float64 tables,
            as tcnn reads float inputs). ``N < 2**32``.
        params: ``(levels.n_entries, F)`` table, float32, float16 or float64, on the target's device (a CUDA
            device for ``"cuda"``, the CPU for ``"cpu"``). For fp16 tables keep fp32 master weights and pass
            ``master.half()``: the gradient flows back to them through autograd. fp16 outputs are accumulated in
            fp32; fp16 table gradients are accumulated with ``__half2``/``__half`` atomics as in tcnn.
        levels: the :class:`~ngp_cli.nn.grid.GridLevels` of the grid (``D`` in 2..4, ``F`` in {1, 2, 4, 8}).
        interpolation: "Linear", "Smoothstep" or "Nearest"; "Simplex" for the SimplexGrid encoding
            (:class:`ngp_cli.nn.encodings.SimplexGridEncoding`: ``levels`` of the simplex lattice, D + 1 vertices
            per level, barycentric weights; hashgrid.cu's header gives the scheme).
        target: "cpu" (host C++ build of the kernels) or "cuda".
        feature_major: a layout hint: the same values, in memory as (L * F, N) (the result a transposed view,
            strides (1, N)), which the kernel writes in F contiguous streams per level instead of 8 bytes of every
            point's row; a matmul takes it as it is (the transposed operand). The backward reads ``grad_out`` in
            whichever of the two layouts it comes (the feature-major one as fast as the output was written:
            :class:`ngp_cli.cuda.cpu_mlp.CPUMLPFunction` returns it so), any other as a row-major copy.

    Returns:
        ``(N, L * F)`` tensor in the params dtype, level-major: ``out[:, l * F + f]``. Gradients: dL/dparams in the
        params dtype, dL/dx in ``x``'s dtype (zero for Nearest); both differentiable once more.

    Raises:
        ValueError: shapes, dtypes, device or target not as above, an unknown interpolation, or "Simplex" with
            cubic levels (or the reverse).
        ngp_cli.cuda.runtime.KernelCompileError: the variant does not compile (carries the compiler log).
    """
    _check(x, params, levels, interpolation, target)
    spec = _Spec(levels, interpolation, target)
    if not torch.is_grad_enabled() or not (x.requires_grad or params.requires_grad):
        return _forward(spec, _prep_x(x, params.dtype, params.device), params.detach().contiguous(), feature_major)
    return _HashGridFn.apply(x, params, spec, feature_major)
