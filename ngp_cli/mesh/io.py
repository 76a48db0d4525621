"""Reading, checking, normalising and writing triangle meshes (through trimesh).

Input meshes are mapped into the unit cube (the frame every neural field of ngp lives in); :class:`UnitFrame` keeps
the similarity transform so extracted meshes are written back in the input's own frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ngp_cli.errors import DataError, OutputError, UsageError
from ngp_cli.runs import atomic_write

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")
WRITE_SUFFIXES = (".ply", ".obj", ".glb", ".stl", ".off")
# The input's bounding box fills [MARGIN, 1 - MARGIN] along its longest side, centred at 0.5 on every axis.
UNIT_MARGIN = 1.0 / 16.0


@dataclass(frozen=True)
class UnitFrame:
    """The similarity x_unit = (x - centre) · scale + 0.5 between a mesh's frame and the unit cube."""

    centre: tuple[float, float, float]
    scale: float

    @classmethod
    def fit(cls, vertices: np.ndarray, margin: float = UNIT_MARGIN) -> UnitFrame:
        """The frame that centres the bounding box of (V, 3) ``vertices`` at 0.5 and maps its longest side onto
        ``1 - 2 margin`` (a flat or single-point mesh keeps scale 1 along a zero extent)."""
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        extent = float((hi - lo).max())
        scale = (1.0 - 2.0 * margin) / extent if extent > 0 else 1.0
        return cls(tuple(float(c) for c in (lo + hi) / 2), scale)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) positions of the mesh's frame → unit cube (float64)."""
        return (np.asarray(x, dtype=np.float64) - np.asarray(self.centre)) * self.scale + 0.5

    def from_unit(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) unit-cube positions → the mesh's frame (float64)."""
        return (np.asarray(x, dtype=np.float64) - 0.5) / self.scale + np.asarray(self.centre)


@dataclass
class InputMesh:
    """A checked input mesh: (V, 3) float64 ``vertices`` and (F, 3) int64 ``faces`` (counter-clockwise seen from
    outside) in its own frame, plus facts about it."""

    vertices: np.ndarray
    faces: np.ndarray
    path: Path
    watertight: bool
    boundary_edges: int
    parts: int
    dropped_faces: int
    reoriented: bool = False


def load_mesh(path: Path) -> InputMesh:
    """Read a triangle mesh (OBJ, PLY, STL, GLB/GLTF, OFF) with trimesh; a multi-part scene is merged into one mesh
    (node transforms applied). Faces of zero area and unused vertices are dropped and vertices at the same position
    merged, so a triangle soup (STL) counts its shared edges. Faces are then oriented consistently (trimesh's
    ``fix_winding``, when neighbours disagree) and outward (flipped when the signed volume is negative), since the
    inside test (the winding number) relies on it; ``reoriented`` records either change.

    Raises:
        DataError: the file is missing, unreadable or corrupt, of an unsupported format, has no triangles, non-finite
            vertices, or only degenerate (zero-area) faces.
    """
    import trimesh

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a mesh file")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise DataError(f"{path}: unsupported mesh format '{path.suffix}' (supported: "
                        f"{', '.join(s.lstrip('.').upper() for s in MESH_SUFFIXES)})")
    try:
        loaded = trimesh.load(str(path), force="scene", process=False)
        geometries = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise DataError(f"{path}: cannot read mesh: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") \
            from None
    if not geometries:
        raise DataError(f"{path}: contains no triangles")
    mesh = trimesh.util.concatenate(geometries) if len(geometries) > 1 else geometries[0]
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if not np.isfinite(vertices).all():
        raise DataError(f"{path}: has non-finite vertex coordinates")
    if faces.size == 0 or faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"{path}: face indices out of range")
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    extent = float(np.ptp(vertices, axis=0).max())
    keep = area2 > (extent * 1e-7) ** 2
    if not keep.any():
        raise DataError(f"{path}: every face is degenerate (zero area)")
    faces = faces[keep]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    clean = trimesh.Trimesh(vertices[used], remap[faces], process=False)
    clean.merge_vertices(merge_tex=True, merge_norm=True)  # STL and some exporters store a triangle soup
    boundary = _boundary_edges(clean.faces)
    reoriented = False
    if not clean.is_winding_consistent:  # neighbouring faces disagree: the winding number would be meaningless
        trimesh.repair.fix_winding(clean)
        reoriented = True
    tri = np.asarray(clean.vertices)[clean.faces]
    if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:  # inside out (negative volume)
        clean.invert()
        reoriented = True
    return InputMesh(vertices=np.asarray(clean.vertices), faces=np.asarray(clean.faces, dtype=np.int64), path=path,
                     watertight=boundary == 0, boundary_edges=boundary, parts=len(geometries),
                     dropped_faces=int((~keep).sum()), reoriented=reoriented)


def _boundary_edges(faces: np.ndarray) -> int:
    """Number of edges used by exactly one face (edges keyed by their sorted vertex pair)."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts == 1).sum())


def check_output_path(out: Path) -> Path:
    """Validate a mesh output path's suffix and folder. Raises UsageError (suffix) or OutputError (folder)."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in WRITE_SUFFIXES:
        raise UsageError(f"--out {out}: mesh format must be one of {', '.join(WRITE_SUFFIXES)}")
    if not out.parent.exists():
        raise OutputError(f"--out {out}: folder {out.parent} does not exist")
    return out


def write_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray | None = None,
               colors: np.ndarray | None = None) -> Path:
    """Write a mesh through trimesh, atomically (temporary file in the same folder, then rename).

    Args:
        vertices: (V, 3) float positions; faces: (F, 3) int; normals: optional (V, 3) unit vertex normals;
        colors: optional (V, 3) float in [0, 1] or uint8 vertex colours.

    Raises:
        OutputError: the file cannot be written.
    """
    import trimesh

    path = check_output_path(path)
    kwargs = {}
    if normals is not None:
        kwargs["vertex_normals"] = np.asarray(normals, dtype=np.float64)
    if colors is not None:
        c = np.asarray(colors)
        if c.dtype != np.uint8:
            c = (np.clip(c, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        kwargs["vertex_colors"] = np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64), process=False,
                           **kwargs)
    atomic_write(path, lambda tmp: mesh.export(tmp, file_type=path.suffix.lower().lstrip(".")), suffix=path.suffix)
    return path
