"""The CPU's fused bf16 inference MLP (``mlp_bf16_cpu.cu``): every layer of a 16-row tile in one pass with
AVX-512-BF16 dot products, for :func:`ngp_cli.cuda.cpu_mlp.inference_mlp` on CPUs that have the instructions.

What it evaluates is :func:`~ngp_cli.cuda.cpu_mlp.inference_mlp`'s bf16 forward (inputs, weights and hidden
activations rounded to bfloat16, float32 sums, ReLU hidden layers, no output activation), for the networks of the
NeRF, SDF, image and NRC tasks: hidden layers 64 wide, at most 16 outputs, at most two column blocks of even widths
up to 64 each. :func:`fits` says whether a call fits, :func:`supports` whether it should run here (the CPU has the
instructions); :func:`fused_inference_mlp` runs it. :func:`fused_nerf` runs a NeRF's density and colour networks for
rendering in one pass (the ``mlp_bf16_nerf`` kernel), the colour network's direction columns summed once per ray
(:func:`direction_sums`); :func:`nerf_fits` says whether it evaluates the networks.

Measured on the 2-core Zen 4 (AVX-512-BF16), 2^19 rows: the NeRF's density network (32 -> 64 -> 16) and colour
network (16 + 16 -> 64 -> 64 -> 3) in oneDNN bf16 matmuls took 17.0 and 26.0 ms; the narrow output layers (64 -> 16,
64 -> 3) alone 5.6 and 5.3 ms, as long as the 32 -> 64 layer (docs/benchmarks/, issue 17).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ngp_cli.cuda.hashgrid import is_feature_major
from ngp_cli.hardware import isa_features

__all__ = ["HIDDEN_WIDTH", "MAX_OUTPUTS", "NERF_GEO_WIDTH", "available", "direction_sums", "fits", "fused_inference_mlp",
           "fused_nerf", "nerf_fits", "pack_weights", "supports"]

SOURCE = "mlp_bf16_cpu.cu"
HIDDEN_WIDTH = 64  # the kernel's hidden layers
MAX_OUTPUTS = 16  # the kernel's last layer, padded to this
NERF_GEO_WIDTH = 16  # the density network's outputs, all fed to the colour network (instant-ngp's NerfNetwork)
_MAX_BLOCK_WIDTH = 64
_TILE = 16


def available() -> bool:
    """Whether this CPU has AVX-512-BF16 (:func:`ngp_cli.hardware.isa_features`, what ``-march=native`` compiles
    for), where the kernel runs its vector code; elsewhere it computes the same values with scalar code, correct but
    slower than oneDNN, and :func:`supports` says no."""
    return "avx512_bf16" in isa_features()


def supports(blocks: Sequence[Tensor], weights: Sequence[Tensor], activation: str, dtype: torch.dtype) -> bool:
    """Whether :func:`~ngp_cli.cuda.cpu_mlp.inference_mlp` should run this call on the kernel: this CPU has the
    instructions (:func:`available`) and the call :func:`fits`."""
    return available() and fits(blocks, weights, activation, dtype)


def fits(blocks: Sequence[Tensor], weights: Sequence[Tensor], activation: str, dtype: torch.dtype) -> bool:
    """Whether the kernel evaluates this MLP and input: bf16, ReLU, 64-wide hidden layers, at most 16 outputs, one
    or two float32 CPU column blocks of even widths up to 64 whose widths sum to the first layer's inputs."""
    if dtype != torch.bfloat16 or activation != "ReLU" or not 1 <= len(blocks) <= 2:
        return False
    if any(b.device.type != "cpu" or b.dtype != torch.float32 or b.dim() != 2 for b in blocks):
        return False
    if any(b.shape[1] % 2 or not 0 < b.shape[1] <= _MAX_BLOCK_WIDTH for b in blocks):
        return False
    if weights[0].shape[1] != sum(b.shape[1] for b in blocks) or weights[-1].shape[0] > MAX_OUTPUTS:
        return False
    return all(w.shape[0] == HIDDEN_WIDTH for w in weights[:-1]) and \
        all(w.shape[1] == HIDDEN_WIDTH for w in weights[1:])


def pack_weights(weights: Sequence[Tensor]) -> Tensor:
    """The kernel's weight words: each ``(out, in)`` matrix rounded to bf16, the last padded to 16 outputs, as int32
    words ``[pair p][output o]`` holding ``(W[o, 2p], W[o, 2p + 1])`` in their (low, high) halves, layer after
    layer: (Σ_l in_l / 2 · out_l,) int32."""
    words = []
    for i, w in enumerate(weights):
        out, n_in = w.shape
        pad = MAX_OUTPUTS if i == len(weights) - 1 else out
        wb = torch.zeros(pad, n_in, dtype=torch.bfloat16)
        wb[:out] = w.detach().to(torch.bfloat16)
        words.append(wb.view(torch.int16).reshape(pad, n_in // 2, 2).transpose(0, 1).contiguous()
                     .view(torch.int32).reshape(-1))
    return torch.cat(words)


def _rows_per_block(n: int) -> int:
    """Rows per block: about eight blocks per thread (load balance), 64 to 4096 rows, a multiple of the tile."""
    per = -(-n // (8 * max(torch.get_num_threads(), 1)))
    return max(64, min(4096, -(-per // _TILE) * _TILE))


def _block_args(block: Tensor) -> list:
    """A column block as the kernels take it: (data, row stride, column stride, width). A feature-major block (the
    hash grid's inference output) is its contiguous (n_i, N) transpose, read column by column; any other layout is
    copied to rows."""
    b = block.detach()
    if is_feature_major(b):
        data, rs, cs = b.t(), 1, b.shape[0]
    else:
        data, rs, cs = b.contiguous(), b.shape[1], 1
    return [data, np.int64(rs), np.int64(cs), np.int32(b.shape[1])]


def fused_inference_mlp(blocks: Sequence[Tensor], weights: Sequence[Tensor], vector: bool = True) -> Tensor:
    """The bf16 forward of a bias-free ReLU MLP on the ``mlp_bf16_forward`` kernel: ``blocks`` one or two (N, n_i)
    float32 column blocks (the input is their concatenation; row-major, or feature-major as the hash grid's
    inference output, any other layout is copied), ``weights`` the ``(out, in)`` float32 matrices → (N, n_out)
    float32 before the output activation. ``vector=False`` runs the kernel's scalar code (what a CPU without
    AVX-512-BF16 compiles; the tests compare both).

    Raises:
        ValueError: an MLP or input the kernel does not evaluate (:func:`fits`), or blocks of different row counts.
    """
    from ngp_cli.cuda.runtime import load_module, output_buffer

    if not fits(blocks, weights, "ReLU", torch.bfloat16):
        raise ValueError("fused_inference_mlp: this MLP or input is not one the kernel evaluates (see fits)")
    n = blocks[0].shape[0]
    if any(b.shape[0] != n for b in blocks):
        raise ValueError(f"fused_inference_mlp: column blocks of {[b.shape[0] for b in blocks]} rows")
    n_out = weights[-1].shape[0]
    out = output_buffer((n, n_out), torch.float32, blocks[0].device)
    if n == 0:
        return out
    args: list = []
    for i in range(2):
        if i < len(blocks):
            args += _block_args(blocks[i])
        else:
            args += [None, np.int64(0), np.int64(0), np.int32(0)]
    per_block = _rows_per_block(n)
    args += [pack_weights(weights), np.int32(len(weights)), np.int32(n_out), out, np.int64(n), np.int32(per_block)]
    module = load_module(SOURCE, "cpu", None if vector else {"NGP_MLP_SCALAR": 1})
    module.launch("mlp_bf16_forward", (-(-n // per_block), 1, 1), (1, 1, 1), args)
    return out


def nerf_fits(features: Tensor, density_weights: Sequence[Tensor], rgb_weights: Sequence[Tensor]) -> bool:
    """Whether :func:`fused_nerf` evaluates this NeRF: the density network :func:`fits` ``features`` and has
    :data:`NERF_GEO_WIDTH` outputs; the colour network takes those plus an even number of direction columns
    (at most 64), has at least one 64-wide hidden layer and at most 16 outputs."""
    if not fits([features], density_weights, "ReLU", torch.bfloat16):
        return False
    if density_weights[-1].shape[0] != NERF_GEO_WIDTH or len(rgb_weights) < 2:
        return False
    n_dir = rgb_weights[0].shape[1] - NERF_GEO_WIDTH
    geo = torch.empty(0, NERF_GEO_WIDTH)
    return 0 < n_dir <= _MAX_BLOCK_WIDTH and n_dir % 2 == 0 and \
        fits([geo, torch.empty(0, n_dir)], rgb_weights, "ReLU", torch.bfloat16)


def direction_sums(encoded_directions: Tensor, rgb_weights: Sequence[Tensor]) -> Tensor:
    """The colour network's first-layer sums over its direction columns (those after the :data:`NERF_GEO_WIDTH`
    density outputs), per ray: (R, C) float32 direction encodings -> (R, 64) float32 ``bf16(x) · bf16(W[:, 16:])ᵀ``,
    the kernel's rounding (bf16 inputs and weights, float32 sums), what :func:`fused_nerf` starts each sample's sums
    from."""
    w = rgb_weights[0].detach()[:, NERF_GEO_WIDTH:]
    x = encoded_directions.detach().float()
    return (x.to(torch.bfloat16).float() @ w.to(torch.bfloat16).float().t()).contiguous()


def fused_nerf(features: Tensor, density_weights: Sequence[Tensor], rgb_weights: Sequence[Tensor], ray_sums: Tensor,
               rows: Tensor, sums_column: int = 0, vector: bool = True) -> tuple[Tensor, Tensor]:
    """A NeRF's density and colour networks for rendering in one pass (the ``mlp_bf16_nerf`` kernel): ``features``
    (N, n_in) float32 grid features (row-major or feature-major) through ``density_weights`` (last layer
    :data:`NERF_GEO_WIDTH` outputs); those outputs, rounded to bf16, through ``rgb_weights`` whose first layer's
    sums over the direction columns come from row ``rows[i]`` ((N,) int64 in [0, R)) of ``ray_sums`` (R, W) float32,
    its columns ``[sums_column, sums_column + 64)`` (:func:`direction_sums`; the model keeps them after the direction
    encoding in one per-ray tensor). Returns (log-density (N,) float32: the density network's output 0; colour
    (N, n_out) float32), both before their activations: the values of :func:`fused_inference_mlp` on the two networks
    with the direction encodings as the colour network's second block, summed in another order. ``vector=False`` runs
    the scalar code.

    Raises:
        ValueError: a network or input the kernel does not evaluate (:func:`nerf_fits`), ``rows`` or ``ray_sums`` of
            the wrong shape, dtype or device.
    """
    from ngp_cli.cuda.runtime import load_module, output_buffer

    if not nerf_fits(features, density_weights, rgb_weights):
        raise ValueError("fused_nerf: these networks or this input are not ones the kernel evaluates (see nerf_fits)")
    n = features.shape[0]
    if rows.shape != (n,) or rows.dtype != torch.int64 or rows.device != features.device:
        raise ValueError(f"fused_nerf: rows must be ({n},) int64, got {tuple(rows.shape)} {rows.dtype}")
    if (ray_sums.dim() != 2 or not 0 <= sums_column <= ray_sums.shape[1] - HIDDEN_WIDTH
            or ray_sums.dtype != torch.float32 or ray_sums.device != features.device):
        raise ValueError(f"fused_nerf: ray_sums must be (R, W) float32 with columns [{sums_column}, "
                         f"{sums_column + HIDDEN_WIDTH}), got {tuple(ray_sums.shape)} {ray_sums.dtype}")
    n_out = rgb_weights[-1].shape[0]
    log_density = output_buffer((n,), torch.float32, features.device)
    rgb = output_buffer((n, n_out), torch.float32, features.device)
    if n == 0:
        return log_density, rgb
    geo_w = [rgb_weights[0].detach()[:, :NERF_GEO_WIDTH], *rgb_weights[1:]]
    sums = ray_sums.detach().contiguous()
    per_block = _rows_per_block(n)
    args = [*_block_args(features), pack_weights(density_weights),
            np.int32(len(density_weights)), sums, np.int64(sums.shape[1]), np.int64(sums_column), rows.contiguous(),
            pack_weights(geo_w), np.int32(len(rgb_weights)), np.int32(n_out), log_density, rgb, np.int64(n),
            np.int32(per_block)]
    module = load_module(SOURCE, "cpu", None if vector else {"NGP_MLP_SCALAR": 1})
    module.launch("mlp_bf16_nerf", (-(-n // per_block), 1, 1), (1, 1, 1), args)
    return log_density, rgb
