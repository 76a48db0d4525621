"""A small physically based path tracer in PyTorch (wavefront: every bounce of every path at once), on any torch
device, with ray casting through the BVH kernels of ``ngp_cli/cuda/mesh.cu`` (or their torch reference).

Light transport: the rendering equation estimated by unidirectional path tracing with next-event estimation (one
light sample per vertex, lights chosen by area) and Russian roulette from depth ``rr_depth`` on (survival probability
min(max channel of the throughput, 0.95)). Emission reached by BSDF sampling after the first hit is not added, since
next-event estimation counts it: every light path is counted once, and no multiple importance sampling is needed for
these non-specular surfaces.

Materials (:class:`~ngp_cli.tasks.nrc.scene.Material`): Lambertian diffuse albedo k_d plus a normalised Phong lobe
k_s (n + 2)/(2π) cos^n α around the mirror direction, n = 2/roughness² − 2 (at least 1); a direction is sampled from
the diffuse (cosine) or glossy (cos^n) lobe with probability proportional to the albedos' luminance, and weighted by
f cos θ / p with p the mixture density. Surfaces are two-sided; emission only leaves the front (face normal) side.

Neural radiance caching hooks (Müller et al. 2021, §3–5): with a ``cache``, a path is terminated at vertex x_k once
the path-spread a(x_1…x_k) = (Σ_{i=2..k} √(‖x_{i−1} − x_i‖² / (p(ω_i) |cos θ_i|)))² exceeds c · a_0, with
a_0 = ‖x_0 − x_1‖² / (4π cos θ_1); the cache's scattered radiance at x_k then replaces the rest of the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ngp_cli.mesh.bvh import MeshBVH
from ngp_cli.metrics import luminance
from ngp_cli.tasks.nrc.scene import Scene

FEATURES = 16  # cache inputs per vertex: position 3, ω_o 3, normal 3, roughness 1, k_d 3, k_s 3


class RadianceCache(Protocol):
    def __call__(self, features: Tensor) -> Tensor:
        """(N, 16) vertex features → (N, 3) scattered radiance."""
        ...


class SceneTensors:
    """A scene on a torch device: its BVH, per-face normals and materials, and the emitters for light sampling.

    Raises:
        DataError: the scene has no emissive face.
    """

    def __init__(self, scene: Scene, device: torch.device) -> None:
        from ngp_cli.errors import DataError

        self.scene = scene
        self.device = device
        self.bvh = MeshBVH(scene.vertices, scene.faces, device=device)
        tri = self.bvh.triangles
        cross = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area = 0.5 * cross.norm(dim=1)
        self.normal = cross / (2.0 * area).clamp_min(1e-30).unsqueeze(1)
        mats = {k: torch.from_numpy(v).to(device) for k, v in scene.material_arrays().items()}
        fm = torch.from_numpy(scene.face_material).to(device)
        self.kd, self.ks, self.le = mats["diffuse"][fm], mats["specular"][fm], mats["emission"][fm]
        self.exponent = (2.0 / mats["roughness"][fm].square() - 2.0).clamp_min(1.0)
        self.roughness = mats["roughness"][fm]
        emissive = torch.nonzero((self.le.amax(dim=1) > 0) & (area > 0))[:, 0]
        if emissive.numel() == 0:
            raise DataError(f"scene {scene.name}: no emissive triangle")
        self.light_faces = emissive
        light_area = area[emissive].double()
        self.light_cdf = (torch.cumsum(light_area, 0) / light_area.sum()).float()
        self.light_area_total = float(light_area.sum())
        lo = torch.from_numpy(scene.vertices.min(axis=0)).float().to(device)
        hi = torch.from_numpy(scene.vertices.max(axis=0)).float().to(device)
        self.lo, self.size = lo, (hi - lo).clamp_min(1e-6)
        self.eps = 1e-4 * float(self.size.max())


@dataclass
class Camera:
    """Pinhole camera rays for a W×H image (pixel (i, j): column i, row j from the top)."""

    origin: Tensor
    right: Tensor
    up: Tensor
    forward: Tensor
    tan_half: float
    width: int
    height: int

    @classmethod
    def from_scene(cls, scene: Scene, width: int, height: int, device: torch.device) -> Camera:
        c = scene.camera
        o = np.asarray(c.origin, dtype=np.float64)
        f = np.asarray(c.target, dtype=np.float64) - o
        f /= np.linalg.norm(f)
        r = np.cross(f, np.asarray(c.up, dtype=np.float64))
        r /= np.linalg.norm(r)
        u = np.cross(r, f)
        t = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
        return cls(t(o), t(r), t(u), t(f), math.tan(math.radians(c.fov) / 2), width, height)

    def rays(self, pixels: Tensor, jitter: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) flat pixel indices + (N, 2) offsets in [0, 1) → (origins, unit directions), both (N, 3)."""
        i = (pixels % self.width).float() + jitter[:, 0]
        j = (pixels // self.width).float() + jitter[:, 1]
        x = (2.0 * i / self.width - 1.0) * self.tan_half * self.width / self.height
        y = (1.0 - 2.0 * j / self.height) * self.tan_half
        d = x[:, None] * self.right + y[:, None] * self.up + self.forward
        d = d / d.norm(dim=1, keepdim=True)
        return self.origin.expand_as(d), d


@dataclass
class Hit:
    """Surface interaction of N rays that hit: position, shading normal facing the incoming ray, material, and the
    front-side emission towards the ray's origin."""

    x: Tensor
    n: Tensor
    cos_in: Tensor
    kd: Tensor
    ks: Tensor
    exponent: Tensor
    roughness: Tensor
    emitted: Tensor


def intersect(st: SceneTensors, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest hits: ``(t (N,), face (N,) int64, -1 for a miss)``."""
    return st.bvh.raycast(o, d, t_min=0.0)


def interaction(st: SceneTensors, o: Tensor, d: Tensor, t: Tensor, face: Tensor) -> Hit:
    n = st.normal[face]
    cos = (n * d).sum(1)
    front = cos < 0  # the ray arrives on the side the face normal points to
    shading = torch.where(front.unsqueeze(1), n, -n)
    return Hit(x=o + t.unsqueeze(1) * d, n=shading, cos_in=cos.abs(), kd=st.kd[face], ks=st.ks[face],
               exponent=st.exponent[face], roughness=st.roughness[face],
               emitted=st.le[face] * front.unsqueeze(1))


def _lobe_probability(h: Hit) -> Tensor:
    ld, ls = luminance(h.kd), luminance(h.ks)
    return torch.where(ld + ls > 0, ld / (ld + ls).clamp_min(1e-12), torch.ones_like(ld))


def bsdf_eval(h: Hit, wo: Tensor, wi: Tensor) -> tuple[Tensor, Tensor]:
    """``(f (N, 3), pdf (N,))`` for outgoing ``wo`` (towards the previous vertex) and incident ``wi`` (unit);
    both 0 below the surface."""
    cos_i = (h.n * wi).sum(1)
    r = 2.0 * (wo * h.n).sum(1, keepdim=True) * h.n - wo
    cos_r = (r * wi).sum(1).clamp_min(0.0)
    lobe = cos_r.pow(h.exponent)
    above = (cos_i > 0).float()
    f = (h.kd / math.pi + h.ks * ((h.exponent + 2) / (2 * math.pi) * lobe).unsqueeze(1)) * above.unsqueeze(1)
    pd = _lobe_probability(h)
    pdf = (pd * cos_i.clamp_min(0) / math.pi + (1 - pd) * (h.exponent + 1) / (2 * math.pi) * lobe) * above
    return f, pdf


def _frame(n: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit tangents completing ``n`` (N, 3) to an orthonormal frame (Duff et al. 2017)."""
    sign = torch.where(n[:, 2] >= 0, 1.0, -1.0)
    a = -1.0 / (sign + n[:, 2])
    b = n[:, 0] * n[:, 1] * a
    t1 = torch.stack([1.0 + sign * n[:, 0] ** 2 * a, sign * b, -sign * n[:, 0]], dim=1)
    t2 = torch.stack([b, sign + n[:, 1] ** 2 * a, -n[:, 1]], dim=1)
    return t1, t2


def bsdf_sample(h: Hit, wo: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sample an incident direction from uniforms ``u`` (N, 3): ``(wi (N, 3), weight = f cos / pdf (N, 3), pdf (N,))``,
    weight and pdf 0 when the sample falls below the surface."""
    pd = _lobe_probability(h)
    phi = 2.0 * math.pi * u[:, 2]
    # diffuse: cosine-weighted about n
    r = u[:, 1].sqrt()
    t1, t2 = _frame(h.n)
    local_d = torch.stack([r * phi.cos(), r * phi.sin(), (1 - u[:, 1]).clamp_min(0).sqrt()], dim=1)
    wd = local_d[:, :1] * t1 + local_d[:, 1:2] * t2 + local_d[:, 2:] * h.n
    # glossy: cos^n about the mirror direction
    mirror = 2.0 * (wo * h.n).sum(1, keepdim=True) * h.n - wo
    cos_a = u[:, 1].pow(1.0 / (h.exponent + 1))
    sin_a = (1 - cos_a.square()).clamp_min(0).sqrt()
    m1, m2 = _frame(mirror)
    ws = (sin_a * phi.cos()).unsqueeze(1) * m1 + (sin_a * phi.sin()).unsqueeze(1) * m2 + cos_a.unsqueeze(1) * mirror
    wi = torch.where((u[:, 0] < pd).unsqueeze(1), wd, ws)
    wi = wi / wi.norm(dim=1, keepdim=True).clamp_min(1e-12)
    f, pdf = bsdf_eval(h, wo, wi)
    cos_i = (h.n * wi).sum(1).clamp_min(0)
    ok = pdf > 1e-12
    weight = torch.where(ok.unsqueeze(1), f * (cos_i / pdf.clamp_min(1e-12)).unsqueeze(1), torch.zeros_like(f))
    return wi, weight, torch.where(ok, pdf, torch.zeros_like(pdf))


def next_event(st: SceneTensors, h: Hit, wo: Tensor, u: Tensor) -> Tensor:
    """One light sample per vertex (uniform by area over the emitters, uniforms ``u`` (N, 3)): the direct radiance
    Le f cos θ_x cos θ_y / (d² p_A) towards ``wo``, 0 when occluded. (N, 3)."""
    k = torch.searchsorted(st.light_cdf, u[:, 0].contiguous()).clamp_max(st.light_faces.numel() - 1)
    face = st.light_faces[k]
    tri = st.bvh.triangles[face]
    s = u[:, 1].sqrt()
    b0, b1 = 1 - s, u[:, 2] * s
    y = b0.unsqueeze(1) * tri[:, 0] + b1.unsqueeze(1) * tri[:, 1] + (1 - b0 - b1).unsqueeze(1) * tri[:, 2]
    w = y - h.x
    dist2 = (w * w).sum(1).clamp_min(1e-12)
    dist = dist2.sqrt()
    wi = w / dist.unsqueeze(1)
    cos_y = -(st.normal[face] * wi).sum(1)
    f, _ = bsdf_eval(h, wo, wi)
    cos_x = (h.n * wi).sum(1)
    ok = (cos_x > 0) & (cos_y > 0)
    origin = h.x + st.eps * h.n
    # shadow ray towards the light sample: t in units of the unnormalised direction, the sample itself at t = 1
    _, hit = st.bvh.raycast(origin, w - st.eps * h.n, t_min=0.0, t_max=1.0 - 1e-4)
    visible = ok & (hit < 0)
    g = cos_x.clamp_min(0) * cos_y.clamp_min(0) / dist2 * st.light_area_total
    return st.le[face] * f * (g * visible).unsqueeze(1)


def features(h: Hit, wo: Tensor) -> Tensor:
    """(N, 16) cache inputs: position, ω_o, normal, roughness, k_d, k_s."""
    return torch.cat([h.x, wo, h.n, h.roughness.unsqueeze(1), h.kd, h.ks], dim=1)


@dataclass
class PathRecords:
    """Training vertices of traced paths: ``features`` (K, 16) and ``targets`` (K, 3) scattered radiance."""

    features: Tensor
    targets: Tensor


@dataclass
class TraceResult:
    radiance: Tensor  # (N, 3)
    from_cache: Tensor  # (N, 3): the part contributed by cache queries
    records: PathRecords | None = None


def trace(st: SceneTensors, o: Tensor, d: Tensor, generator: torch.Generator, *, max_depth: int = 32,
          rr_depth: int = 3, cache: RadianceCache | None = None, spread_c: float = 0.01, train: bool = False,
          suffix: int = 2, unbiased: Tensor | None = None) -> TraceResult:
    """Path-trace rays (N, 3) from the camera.

    Without ``cache``: plain path tracing. With ``cache`` and ``train=False``: paths end in the cache at the first
    vertex past the path-spread threshold (rendering). With ``train=True``: training paths, which go on for
    ``suffix`` more vertices past the threshold and end in the cache there (self-training), except where
    ``unbiased`` (N,) bool is set (they end only by Russian roulette); every vertex before the end is recorded with
    the radiance the rest of its path brought back as the training target.

    The state of the live paths is kept compacted (one float and one integer tensor, filtered together), so a bounce
    costs the same few dozen tensor operations whatever the number of paths left.
    """
    dev = o.device
    n = o.shape[0]
    radiance = torch.zeros(n, 3, device=dev)
    from_cache = torch.zeros(n, 3, device=dev)
    tail = torch.zeros(n, 3, device=dev)
    n_vertices = torch.zeros(n, dtype=torch.int64, device=dev)
    # float state: o 0:3, d 3:6, beta 6:9, spread 9, a0 10, last_pdf 11; integer state: path id, suffix left, unbiased
    fs = torch.cat([o, d, torch.ones(n, 3, device=dev), torch.zeros(n, 2, device=dev), torch.ones(n, 1, device=dev)],
                   dim=1)
    unb = unbiased.to(torch.int64) if unbiased is not None else torch.zeros(n, dtype=torch.int64, device=dev)
    ist = torch.stack([torch.arange(n, device=dev), torch.full((n,), -1, dtype=torch.int64, device=dev), unb], dim=1)
    rec_feat, rec_nee, rec_weight, rec_path, rec_depth = [], [], [], [], []

    for depth in range(max_depth):
        if ist.shape[0] == 0:
            break
        t, face = intersect(st, fs[:, 0:3], fs[:, 3:6])
        hit = face >= 0
        if not bool(hit.all()):
            fs, ist, t, face = fs[hit], ist[hit], t[hit], face[hit]
            if ist.shape[0] == 0:
                break
        pid = ist[:, 0]
        dd = fs[:, 3:6]
        h = interaction(st, fs[:, 0:3], dd, t, face)
        wo = -dd
        b = fs[:, 6:9]
        if depth == 0:
            radiance.index_add_(0, pid, b * h.emitted)
            fs[:, 10] = t.square() / (4 * math.pi * h.cos_in.clamp_min(1e-6))
        else:
            fs[:, 9] += (t.square() / (fs[:, 11] * h.cos_in).clamp_min(1e-12)).sqrt()
        if cache is not None and depth > 0:
            past = fs[:, 9].square() > spread_c * fs[:, 10]
            if train:
                start = past & (ist[:, 1] < 0) & (ist[:, 2] == 0)
                ist[start, 1] = suffix
                stop = ist[:, 1] == 0
            else:
                stop = past
            if bool(stop.any()):
                idx = pid[stop]
                with torch.no_grad():
                    value = cache(features(_subset(h, stop), wo[stop])).float().clamp_min(0.0)
                if train:
                    tail[idx] = value
                else:
                    contribution = b[stop] * value
                    radiance.index_add_(0, idx, contribution)
                    from_cache.index_add_(0, idx, contribution)
                keep = ~stop
                fs, ist, h, wo, b, pid = fs[keep], ist[keep], _subset(h, keep), wo[keep], b[keep], pid[keep]
                if ist.shape[0] == 0:
                    break
            if train:
                ist[:, 1] = torch.where(ist[:, 1] > 0, ist[:, 1] - 1, ist[:, 1])
        m = ist.shape[0]
        u = torch.rand(m, 7, generator=generator).to(dev)
        direct = next_event(st, h, wo, u[:, :3])
        radiance.index_add_(0, pid, b * direct)
        wi, weight, pdf = bsdf_sample(h, wo, u[:, 3:6])
        if depth + 1 >= rr_depth:
            q = (b * weight).amax(dim=1).clamp(0.0, 0.95)
            weight = torch.where((u[:, 6] < q).unsqueeze(1), weight / q.clamp_min(1e-12).unsqueeze(1),
                                 torch.zeros_like(weight))
        if train:
            rec_feat.append(features(h, wo))
            rec_nee.append(direct)
            rec_weight.append(weight)
            rec_path.append(pid)
            rec_depth.append(n_vertices[pid].clone())
            n_vertices[pid] += 1
        fs = torch.cat([h.x + st.eps * h.n, wi, b * weight, fs[:, 9:11], pdf.unsqueeze(1)], dim=1)
        moving = weight.amax(dim=1) > 0
        if not bool(moving.all()):
            fs, ist = fs[moving], ist[moving]
    records = _targets(rec_feat, rec_nee, rec_weight, rec_path, rec_depth, n_vertices, tail) if train else None
    return TraceResult(radiance, from_cache, records)


def _subset(h: Hit, mask: Tensor) -> Hit:
    return Hit(*(getattr(h, f)[mask] for f in ("x", "n", "cos_in", "kd", "ks", "exponent", "roughness", "emitted")))


def _targets(feat, nee, weight, path, depth, n_vertices, tail) -> PathRecords:
    """Scattered radiance at every recorded vertex, back to front: L(v) = nee(v) + weight(v) · L(v + 1), with the
    value after a path's last vertex = its tail (the cache's value where it ended in the cache, else 0)."""
    if not feat:
        dev = tail.device
        return PathRecords(torch.zeros(0, FEATURES, device=dev), torch.zeros(0, 3, device=dev))
    feat, nee, weight = torch.cat(feat), torch.cat(nee), torch.cat(weight)
    path, depth = torch.cat(path), torch.cat(depth)
    max_v = int(n_vertices.max())
    # slot of each record in a dense (paths, max_v) table
    table = torch.full((tail.shape[0], max_v), -1, dtype=torch.int64, device=tail.device)
    table[path, depth] = torch.arange(path.numel(), device=tail.device)
    target = torch.zeros_like(nee)
    after = tail.clone()
    for v in range(max_v - 1, -1, -1):
        rows = torch.nonzero(table[:, v] >= 0)[:, 0]
        slot = table[rows, v]
        value = nee[slot] + weight[slot] * after[rows]
        target[slot] = value
        after[rows] = value
    return PathRecords(feat, target)


def render_samples(st: SceneTensors, camera: Camera, samples: Tensor, generator: torch.Generator, *,
                   chunk: int = 1 << 16, **trace_kwargs) -> tuple[Tensor, Tensor]:
    """Trace one camera path per entry of ``samples`` ((M,) int64 pixel indices y·W + x, each path with its own
    jitter inside the pixel), ``chunk`` paths at a time, drawing from ``generator``. Returns the per-pixel sums
    ((W·H, 3) float32, linear RGB) of the paths' radiance and of the part of it that came from the cache."""
    total = torch.zeros(camera.width * camera.height, 3, device=st.device)
    cached = torch.zeros_like(total)
    for s in range(0, samples.numel(), chunk):
        pixels = samples[s:s + chunk]
        o, d = camera.rays(pixels, torch.rand(pixels.numel(), 2, generator=generator).to(st.device))
        result = trace(st, o, d, generator, **trace_kwargs)
        total.index_add_(0, pixels, result.radiance)
        cached.index_add_(0, pixels, result.from_cache)
    return total, cached


def render_image(st: SceneTensors, camera: Camera, spp: int, generator: torch.Generator, *, chunk: int = 1 << 16,
                 **trace_kwargs) -> tuple[Tensor, Tensor]:
    """An (H, W, 3) image at ``spp`` samples per pixel (mean), and the part of it that came from the cache."""
    w, h = camera.width, camera.height
    total, cached = render_samples(st, camera, torch.arange(w * h, device=st.device).repeat(spp), generator,
                                   chunk=chunk, **trace_kwargs)
    return (total / spp).reshape(h, w, 3), (cached / spp).reshape(h, w, 3)
