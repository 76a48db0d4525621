"""Scenes of the path tracer: triangle meshes with per-face materials, a pinhole camera, and the built-in Cornell box.

A scene file is YAML or JSON::

    camera: {origin: [0.5, 0.5, 2.2], target: [0.5, 0.5, 0.0], up: [0, 1, 0], fov: 40}
    objects:
      - mesh: bunny.obj                      # OBJ, PLY, STL, GLB/GLTF, OFF (paths relative to the scene file)
        transform: {scale: 0.5, translate: [0.5, 0.0, 0.5]}   # optional: x' = x * scale + translate
        material: {diffuse: [0.7, 0.7, 0.7], specular: [0.0, 0.0, 0.0], roughness: 0.5, emission: [0, 0, 0]}
      - quad: [[0.4, 0.99, 0.4], [0.6, 0.99, 0.4], [0.6, 0.99, 0.6], [0.4, 0.99, 0.6]]   # a planar quad
        material: {emission: [15, 12, 6]}

Materials (every key optional): ``diffuse`` and ``specular`` albedos in [0, 1] per channel with diffuse + specular
≤ 1, ``roughness`` in (0, 1] (the glossy lobe's width), ``emission`` ≥ 0 (radiance, emitted on the side the face
normal points to: counter-clockwise corners seen from the lit side). At least one emitter is required.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ngp_cli.errors import DataError

_MATERIAL_KEYS = {"diffuse", "specular", "roughness", "emission"}
_OBJECT_KEYS = {"mesh", "quad", "transform", "material"}
_CAMERA_KEYS = {"origin", "target", "up", "fov"}


@dataclass
class Material:
    """A diffuse + glossy (normalised Phong) surface, optionally emissive; colours are linear RGB."""

    diffuse: tuple[float, float, float] = (0.7, 0.7, 0.7)
    specular: tuple[float, float, float] = (0.0, 0.0, 0.0)
    roughness: float = 0.5
    emission: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class Camera:
    """A pinhole camera at ``origin`` looking at ``target``, vertical field of view ``fov`` degrees."""

    origin: tuple[float, float, float] = (0.5, 0.5, 2.2)
    target: tuple[float, float, float] = (0.5, 0.5, 0.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov: float = 40.0


@dataclass
class Scene:
    """Triangles (``vertices`` (V, 3) float64, ``faces`` (F, 3) int64), ``face_material`` (F,) int64 indices into
    ``materials``, and the camera. Built by :func:`cornell_box` or :func:`load_scene`."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    face_material: np.ndarray
    materials: list[Material]
    camera: Camera = field(default_factory=Camera)

    def material_arrays(self) -> dict[str, np.ndarray]:
        """(M, 3) diffuse, specular, emission and (M,) roughness float32 arrays."""
        return {k: np.array([getattr(m, k) for m in self.materials], dtype=np.float32)
                for k in ("diffuse", "specular", "emission", "roughness")}

    def fingerprint(self) -> str:
        """A hash of everything that changes the image (geometry, materials, camera)."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.vertices.astype(np.float64), self.faces.astype(np.int64), self.face_material.astype(np.int64)):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((self.materials, self.camera)).encode())
        return h.hexdigest()[:16]


def _quad(corners: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(corners, dtype=np.float64)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def _box(lo: tuple[float, float, float], hi: tuple[float, float, float], angle_deg: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned box [lo, hi] rotated about the vertical axis through its centre, outward faces."""
    import trimesh

    lo_a, hi_a = np.asarray(lo), np.asarray(hi)
    box = trimesh.creation.box(extents=hi_a - lo_a)
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.asarray(box.vertices) @ rot.T + (lo_a + hi_a) / 2, np.asarray(box.faces)


def cornell_box() -> Scene:
    """The built-in Cornell box in [0, 1]³ (y up, open towards +z): white floor, ceiling and back wall, red left and
    green right walls (the classic scene's albedos), a square area light under the ceiling, a short diffuse box and
    a tall glossy one (specular 0.5, roughness 0.2)."""
    white = Material(diffuse=(0.725, 0.71, 0.68))
    red = Material(diffuse=(0.63, 0.065, 0.05))
    green = Material(diffuse=(0.14, 0.45, 0.091))
    light = Material(diffuse=(0.78, 0.78, 0.78), emission=(17.0, 12.0, 4.0))
    glossy = Material(diffuse=(0.3, 0.3, 0.3), specular=(0.5, 0.5, 0.5), roughness=0.2)
    parts: list[tuple[tuple[np.ndarray, np.ndarray], int]] = [
        (_quad([[0, 0, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]]), 0),  # floor, normal +y
        (_quad([[0, 1, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1]]), 0),  # ceiling, normal -y
        (_quad([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]), 0),  # back wall, normal +z
        (_quad([[0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 1, 1]]), 1),  # left wall, normal +x
        (_quad([[1, 0, 0], [1, 0, 1], [1, 1, 1], [1, 1, 0]]), 2),  # right wall, normal -x
        (_quad([[0.39, 0.998, 0.39], [0.61, 0.998, 0.39], [0.61, 0.998, 0.61], [0.39, 0.998, 0.61]]), 3),  # light
        (_box((0.53, 0.0, 0.18), (0.83, 0.3, 0.48), -17.0), 0),  # short box
        (_box((0.17, 0.0, 0.3), (0.47, 0.6, 0.6), 17.0), 4),  # tall glossy box
    ]
    return _assemble("cornell-box", parts, [white, red, green, light, glossy], Camera())


def _assemble(name: str, parts, materials: list[Material], camera: Camera) -> Scene:
    verts, faces, mats = [], [], []
    offset = 0
    for (v, f), m in parts:
        verts.append(np.asarray(v, dtype=np.float64))
        faces.append(np.asarray(f, dtype=np.int64) + offset)
        mats.append(np.full(len(f), m, dtype=np.int64))
        offset += len(v)
    return Scene(name, np.concatenate(verts), np.concatenate(faces), np.concatenate(mats), materials, camera)


# ---------------------------------------------------------------------------------------------------------------------
# Scene files


def _vector(value: Any, where: str, length: int = 3) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) != length:
        raise DataError(f"{where} must be a list of {length} numbers, got {value!r}")
    try:
        out = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise DataError(f"{where} must be a list of {length} numbers, got {value!r}") from None
    if not all(math.isfinite(x) for x in out):
        raise DataError(f"{where} must be finite, got {value!r}")
    return out


def _unknown(keys, allowed: set[str], where: str) -> None:
    import difflib

    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(allowed))})"
            raise DataError(f"{where}: unknown key '{key}'{hint}")


def _material(raw: Any, where: str) -> Material:
    if raw is None:
        return Material()
    if not isinstance(raw, dict):
        raise DataError(f"{where} must be a mapping, got {type(raw).__name__}")
    _unknown(raw, _MATERIAL_KEYS, where)
    m = Material()
    if "diffuse" in raw:
        m.diffuse = _vector(raw["diffuse"], f"{where}.diffuse")
    if "specular" in raw:
        m.specular = _vector(raw["specular"], f"{where}.specular")
    if "emission" in raw:
        m.emission = _vector(raw["emission"], f"{where}.emission")
    if "roughness" in raw:
        try:
            m.roughness = float(raw["roughness"])
        except (TypeError, ValueError):
            raise DataError(f"{where}.roughness must be a number, got {raw['roughness']!r}") from None
    d, s = np.array(m.diffuse), np.array(m.specular)
    if (d < 0).any() or (s < 0).any() or (d + s > 1.0 + 1e-6).any():
        raise DataError(f"{where}: diffuse and specular must be >= 0 with diffuse + specular <= 1 per channel "
                        "(energy conservation)")
    if not 0.0 < m.roughness <= 1.0:
        raise DataError(f"{where}.roughness must be in (0, 1], got {m.roughness}")
    if (np.array(m.emission) < 0).any():
        raise DataError(f"{where}.emission must be >= 0, got {list(m.emission)}")
    return m


def load_scene(path: Path) -> Scene:
    """Read a YAML/JSON scene file (module docstring) with its meshes.

    Raises:
        DataError: missing or unreadable file, malformed YAML/JSON, unknown keys, bad values, missing meshes, no
            emitter.
    """
    from ngp_cli.config import read_mapping_file
    from ngp_cli.mesh.io import load_mesh

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such scene file")
    raw = read_mapping_file(path, DataError, "scene file")
    _unknown(raw, {"camera", "objects"}, str(path))
    cam_raw = raw.get("camera") or {}
    if not isinstance(cam_raw, dict):
        raise DataError(f"{path}: camera must be a mapping")
    _unknown(cam_raw, _CAMERA_KEYS, f"{path}: camera")
    camera = Camera()
    for key in ("origin", "target", "up"):
        if key in cam_raw:
            setattr(camera, key, _vector(cam_raw[key], f"{path}: camera.{key}"))
    if "fov" in cam_raw:
        try:
            camera.fov = float(cam_raw["fov"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: camera.fov must be a number of degrees") from None
        if not 1.0 <= camera.fov <= 170.0:
            raise DataError(f"{path}: camera.fov must be in [1, 170] degrees, got {camera.fov}")
    objects = raw.get("objects")
    if not isinstance(objects, list) or not objects:
        raise DataError(f"{path}: 'objects' must be a non-empty list")
    parts, materials = [], []
    for k, obj in enumerate(objects):
        where = f"{path}: objects[{k}]"
        if not isinstance(obj, dict):
            raise DataError(f"{where} must be a mapping")
        _unknown(obj, _OBJECT_KEYS, where)
        if ("mesh" in obj) == ("quad" in obj):
            raise DataError(f"{where} needs exactly one of 'mesh' or 'quad'")
        if "quad" in obj:
            q = obj["quad"]
            if not isinstance(q, list) or len(q) != 4:
                raise DataError(f"{where}.quad must be 4 corners")
            v, f = _quad([_vector(c, f"{where}.quad[{i}]") for i, c in enumerate(q)])
        else:
            mesh_path = Path(str(obj["mesh"]))
            mesh = load_mesh(mesh_path if mesh_path.is_absolute() else path.parent / mesh_path)
            v, f = mesh.vertices, mesh.faces
        t = obj.get("transform") or {}
        if not isinstance(t, dict):
            raise DataError(f"{where}.transform must be a mapping")
        _unknown(t, {"scale", "translate"}, f"{where}.transform")
        scale = float(t.get("scale", 1.0))
        if not (math.isfinite(scale) and scale > 0):
            raise DataError(f"{where}.transform.scale must be a positive number")
        v = np.asarray(v, dtype=np.float64) * scale + np.asarray(_vector(t.get("translate", [0, 0, 0]),
                                                                         f"{where}.transform.translate"))
        materials.append(_material(obj.get("material"), f"{where}.material"))
        parts.append(((v, f), k))
    scene = _assemble(path.stem, parts, materials, camera)
    if not any(max(m.emission) > 0 for m in materials):
        raise DataError(f"{path}: no object has an emission > 0: the scene would be black")
    return scene
