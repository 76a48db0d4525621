"""NeRF data: transforms.json parsing and validation, image loading/downscaling, pixel sampling and camera rays."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ngp_cli.errors import DataError
from ngp_cli.tasks.nerf.cameras import distort, generate_rays, nerf_matrix_to_ngp, pixel_grid, undistort
from ngp_cli.tasks.nerf.data import load_dataset

FOX_DIST = (0.0578421, -0.0805099, -0.000980296, 0.00015575)


def pose(tx=0.0, ty=0.0, tz=4.0, angle=0.0):
    """4x4 camera-to-world: rotation about y by ``angle``, camera centre (tx, ty, tz)."""
    c, s = math.cos(angle), math.sin(angle)
    return [[c, 0.0, s, tx], [0.0, 1.0, 0.0, ty], [-s, 0.0, c, tz], [0.0, 0.0, 0.0, 1.0]]


def write_images(folder: Path, n: int, h=6, w=8, c=3, ext=".png", seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        iio.imwrite(folder / f"r_{i}{ext}", img if c != 1 else img[..., 0])
        out.append(img)
    return out


def write_transforms(path: Path, frames=None, n=3, file_fmt="./imgs/r_{i}", **top) -> Path:
    """A transforms JSON at ``path``; ``frames`` defaults to ``n`` frames named by ``file_fmt``."""
    if frames is None:
        frames = [{"file_path": file_fmt.format(i=i), "transform_matrix": pose(angle=0.3 * i)} for i in range(n)]
    doc = {**top, "frames": frames}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def blender(tmp_path) -> tuple[Path, list[np.ndarray]]:
    imgs = write_images(tmp_path / "imgs", 3, c=4)
    return write_transforms(tmp_path / "transforms_train.json", camera_angle_x=0.6911112070083618), imgs


# -- transforms.json parsing ------------------------------------------------------------------------------------------


def test_blender_paths_without_extension_and_focal_from_camera_angle(blender):
    jf, imgs = blender
    ds = load_dataset(jf.parent, "train")
    assert len(ds) == 3 and ds.images.shape == (3, 6, 8, 4) and ds.images.dtype == torch.uint8
    assert ds.has_alpha and ds.white_background and ds.n_missing == 0
    assert [p.name for p in ds.file_paths] == ["r_0.png", "r_1.png", "r_2.png"]
    np.testing.assert_array_equal(ds.images[1].numpy(), imgs[1])
    f = 0.5 * 8 / math.tan(0.5 * 0.6911112070083618)
    np.testing.assert_allclose(ds.intrinsics.numpy(), [[f, f, 4.0, 3.0]] * 3, rtol=1e-6)
    assert torch.all(ds.distortion == 0)
    assert ds.aabb_scale == 1 and ds.scale == pytest.approx(0.33) and ds.offset == (0.5, 0.5, 0.5)
    # translation scaled and offset, rotation untouched, axes not cycled
    np.testing.assert_allclose(ds.c2w[2, :, 3].numpy(), [0.5, 0.5, 4 * 0.33 + 0.5], rtol=1e-6)
    np.testing.assert_allclose(ds.c2w[2, :, :3].numpy(), np.asarray(pose(angle=0.6))[:3, :3], atol=1e-6)
    # the JSON file itself works too, and the RGB composite on white uses straight alpha
    ds2 = load_dataset(jf)
    assert len(ds2) == 3
    a = imgs[0][..., 3:4] / 255.0
    want = imgs[0][..., :3] / 255.0 * a + (1 - a)
    np.testing.assert_allclose(ds.image_float(0, (1.0, 1.0, 1.0)).numpy(), want, atol=1e-6)
    np.testing.assert_allclose(ds.image_float(0, None).numpy(), imgs[0][..., :3] / 255.0, atol=1e-6)


def test_explicit_intrinsics_distortion_and_per_frame_overrides(tmp_path):
    write_images(tmp_path / "imgs", 3)
    frames = [{"file_path": f"imgs/r_{i}.png", "transform_matrix": pose()} for i in range(3)]
    frames[1].update(fl_x=20.0, cx=3.0, k1=0.5)  # fl_y is not in the frame: the frame's fl_x sets both axes
    frames[2].update(camera_angle_x=math.pi / 2)  # a frame's angle overrides the top-level focal
    jf = write_transforms(tmp_path / "transforms.json", frames, fl_x=10.0, fl_y=11.0, cx=4.5, cy=2.5,
                          k1=0.1, k2=0.2, p1=0.3, p2=0.4, aabb_scale=5, scale=0.5, offset=[0, 1, 2])
    ds = load_dataset(jf)
    np.testing.assert_allclose(ds.intrinsics.numpy(), [[10, 11, 4.5, 2.5], [20, 20, 3.0, 2.5], [4, 4, 4.5, 2.5]],
                               rtol=1e-6)
    np.testing.assert_allclose(ds.distortion.numpy(), [[0.1, 0.2, 0.3, 0.4], [0.5, 0.2, 0.3, 0.4],
                                                       [0.1, 0.2, 0.3, 0.4]], rtol=1e-6)
    assert ds.aabb_scale == 8  # rounded up to a power of two
    assert not ds.has_alpha and not ds.white_background and ds.images.shape[-1] == 3
    np.testing.assert_allclose(ds.c2w[0, :, 3].numpy(), [0, 1, 2 + 4 * 0.5])


def test_single_axis_focal_and_default_principal_point(tmp_path):
    write_images(tmp_path / "imgs", 1)
    jf = write_transforms(tmp_path / "transforms.json", n=1, fl_y=7.0, aabb_scale=1000)
    ds = load_dataset(jf)
    np.testing.assert_allclose(ds.intrinsics[0].numpy(), [7, 7, 4, 3])
    assert ds.aabb_scale == 128


def test_json_size_different_from_images_rescales_intrinsics(tmp_path, capsys):
    write_images(tmp_path / "imgs", 1)  # 8x6 images
    jf = write_transforms(tmp_path / "transforms.json", n=1, fl_x=32.0, cx=16.0, cy=12.0, w=16, h=12)
    ds = load_dataset(jf)
    np.testing.assert_allclose(ds.intrinsics[0].numpy(), [16, 16, 8, 6])
    assert "intrinsics rescaled" in capsys.readouterr().err


# -- images ----------------------------------------------------------------------------------------------------------


def test_downscale_box_filter_and_intrinsics(tmp_path):
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3) * 2  # 7x5: cropped to 6x4 by downscale 2
    (tmp_path / "imgs").mkdir()
    iio.imwrite(tmp_path / "imgs" / "a.png", img)
    frames = [{"file_path": "imgs/a.png", "transform_matrix": pose()}]
    jf = write_transforms(tmp_path / "transforms.json", frames, fl_x=10.0, fl_y=12.0, cx=3.5, cy=2.5)
    ds = load_dataset(jf, downscale=2)
    assert (ds.width, ds.height) == (3, 2) and ds.images.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(ds.intrinsics[0].numpy(), [5, 6, 1.75, 1.25])
    # top-left output pixel, red channel: mean of img[0:2, 0:2, 0] = (0 + 6 + 42 + 48) / 4 = 24
    assert img[0, 0, 0] == 0 and img[0, 1, 0] == 6 and img[1, 0, 0] == 42 and img[1, 1, 0] == 48
    assert ds.images[0, 0, 0, 0].item() == 24
    want = img[:4, :6].reshape(2, 2, 3, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(ds.images[0].numpy(), np.floor(want + 0.5).astype(np.uint8))


def test_gray_gray_alpha_and_16_bit_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    iio.imwrite(tmp_path / "imgs" / "g.png", gray)
    jf = write_transforms(tmp_path / "transforms.json", [{"file_path": "imgs/g.png", "transform_matrix": pose()}],
                          fl_x=5.0)
    ds = load_dataset(jf)
    assert ds.images.shape == (1, 6, 8, 3)
    np.testing.assert_array_equal(ds.images[0].numpy(), np.repeat(gray[..., None], 3, axis=2))

    ga = np.stack([gray, 255 - gray], axis=-1)
    iio.imwrite(tmp_path / "imgs" / "ga.png", ga)
    write_transforms(jf, [{"file_path": "imgs/ga.png", "transform_matrix": pose()}], fl_x=5.0)
    ds = load_dataset(jf)
    assert ds.images.shape == (1, 6, 8, 4) and ds.white_background
    np.testing.assert_array_equal(ds.images[0, ..., 3].numpy(), 255 - gray)
    np.testing.assert_array_equal(ds.images[0, ..., 1].numpy(), gray)

    from ngp_cli.images import write_image

    rgb16 = np.full((6, 8, 3), 65535, dtype=np.uint16)
    rgb16[0, 0] = (0, 257, 33025)  # 257 * k maps to k exactly; 33025 = 128.502 * 257 rounds to 129
    write_image(tmp_path / "imgs" / "w.png", rgb16)
    write_transforms(jf, [{"file_path": "imgs/w.png", "transform_matrix": pose()}], fl_x=5.0)
    ds = load_dataset(jf)
    assert ds.images.dtype == torch.uint8
    assert ds.images[0, 0, 0].tolist() == [0, 1, 129] and ds.images[0, 5, 7].tolist() == [255, 255, 255]


def test_missing_images_are_skipped_with_one_warning(tmp_path, capsys):
    write_images(tmp_path / "imgs", 5, ext=".jpg")
    for i in (1, 3):
        (tmp_path / "imgs" / f"r_{i}.jpg").unlink()
    jf = write_transforms(tmp_path / "transforms.json", n=6, file_fmt="imgs/r_{i}.jpg", fl_x=5.0)
    ds = load_dataset(jf)
    assert len(ds) == 3 and ds.n_missing == 3
    assert [p.name for p in ds.file_paths] == ["r_0.jpg", "r_2.jpg", "r_4.jpg"]
    np.testing.assert_allclose(ds.c2w[:, 0, 2].numpy(), np.sin([0.0, 0.6, 1.2]), atol=1e-6)  # poses follow frames
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert f"{jf}: 3 of 6 frames have no image file; skipped" in err


def test_holdout_every_splits_a_single_transforms_file(tmp_path):
    write_images(tmp_path / "imgs", 7)
    jf = write_transforms(tmp_path / "transforms.json", n=7, file_fmt="imgs/r_{i}.png", fl_x=5.0)
    names = {s: [p.name for p in load_dataset(tmp_path, s, holdout_every=3).file_paths]
             for s in ("train", "val", "test", "all")}
    assert names["val"] == names["test"] == ["r_0.png", "r_3.png", "r_6.png"]
    assert names["train"] == ["r_1.png", "r_2.png", "r_4.png", "r_5.png"]
    assert len(names["all"]) == 7
    # k = 0: nothing held out; training frames are never passed off as held-out views
    assert len(load_dataset(jf, "train")) == len(load_dataset(jf, "all")) == 7
    for split in ("val", "test"):
        with pytest.raises(DataError, match=rf"transforms\.json: no held-out views: nerf\.holdout_every=0 .*'{split}'"):
            load_dataset(jf, split)
    with pytest.raises(DataError, match=r"transforms\.json: split 'train' has no frames"):
        load_dataset(jf, "train", holdout_every=1)


def test_per_split_files_and_all(tmp_path):
    write_images(tmp_path / "imgs", 3)
    write_transforms(tmp_path / "transforms_train.json", n=2, fl_x=5.0)
    frames = [{"file_path": "./imgs/r_2", "transform_matrix": pose()}]
    write_transforms(tmp_path / "transforms_val.json", frames, fl_x=6.0)
    assert len(load_dataset(tmp_path, "train")) == 2
    val = load_dataset(tmp_path, "val")
    assert len(val) == 1 and val.intrinsics[0, 0].item() == 6.0
    both = load_dataset(tmp_path, "all")
    assert [p.name for p in both.file_paths] == ["r_0.png", "r_1.png", "r_2.png"]
    with pytest.raises(DataError, match="transforms_test.json or transforms.json"):
        load_dataset(tmp_path, "test")


# -- bad input --------------------------------------------------------------------------------------------------------

M = pose()


@pytest.mark.parametrize(
    "doc, match",
    [
        ('{"frames": [1, 2,]}', r"malformed JSON at line 1, column \d+"),
        ("[1, 2]", "expected a JSON object"),
        ({"fl_x": 5.0}, "missing 'frames'"),
        ({"fl_x": 5.0, "frames": []}, "'frames' is empty"),
        ({"fl_x": 5.0, "frames": [{"file_path": "imgs/r_0.png"}]},
         r"frame 0 \(imgs/r_0.png\): missing 'transform_matrix'"),
        ({"fl_x": 5.0, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": M[:2]}]}, "3x4 or 4x4"),
        ({"fl_x": 5.0, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": [r[:3] for r in M]}]},
         "3x4 or 4x4"),
        ({"fl_x": 5.0, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": [["a", 0, 0, 0]] + M[1:]}]},
         "3x4 or 4x4"),
        ('{"fl_x": 5.0, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": '
         '[[1, 0, 0, NaN], [0, 1, 0, 0], [0, 0, 1, 0]]}]}', "NaN or infinite"),
        ({"fl_x": 5.0, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0],
                                                                                       [0, 0, 0, 0]]}]},
         "degenerate rotation"),
        ({"frames": [{"file_path": "imgs/r_0.png", "transform_matrix": M}]}, "no camera intrinsics"),
        ('{"fl_x": Infinity, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": [[1, 0, 0, 0], '
         '[0, 1, 0, 0], [0, 0, 1, 0]]}]}', "'fl_x' is not finite"),
        ({"fl_x": 5.0, "cx": "4", "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": M}]},
         "'cx' must be a number"),
        ({"fl_x": -5.0, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": M}]}, "non-positive"),
        ({"camera_angle_x": 4.0, "frames": [{"file_path": "imgs/r_0.png", "transform_matrix": M}]}, "non-positive"),
        ({"fl_x": 5.0, "frames": [{"file_path": "imgs/nothere.png", "transform_matrix": M}]},
         "none of the 1 frames of split 'train' has an image file"),
    ],
)
def test_bad_transforms_raise_data_error_naming_the_file(tmp_path, doc, match):
    write_images(tmp_path / "imgs", 1)
    jf = tmp_path / "transforms.json"
    jf.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(DataError, match=match) as err:
        load_dataset(jf)
    assert str(err.value).startswith(f"{jf}: ") and "\n" not in str(err.value)
    assert err.value.exit_code == 4


@pytest.mark.parametrize("matrix, match", [
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], r"'?transform_matrix'? has a degenerate rotation \(determinant 0\)"),
    ([[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0]], r"'?transform_matrix'? contains NaN or infinite values"),
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], r"'?transform_matrix'? must be a 3x4 or 4x4 matrix, got shape \(3, 3\)"),
], ids=["degenerate", "nan", "3x3"])
def test_datasets_and_camera_paths_share_the_matrix_checks(tmp_path, matrix, match):
    """One home (tasks/nerf/transforms.py) for the checks of transforms.json captures and camera paths."""
    from ngp_cli.tasks.nerf.camera_path import load_camera_path

    write_images(tmp_path / "imgs", 1)
    path = write_transforms(tmp_path / "transforms.json", frames=[{"file_path": "./imgs/r_0", "transform_matrix":
                                                                   matrix}], camera_angle_x=0.7)
    with pytest.raises(DataError, match=match) as from_dataset:
        load_dataset(tmp_path, "train")
    with pytest.raises(DataError, match=match) as from_camera_path:
        load_camera_path(path)
    assert str(from_dataset.value).startswith(str(path)) and str(from_camera_path.value).startswith(str(path))


def test_mixed_sizes_and_corrupt_images(tmp_path):
    write_images(tmp_path / "imgs", 2)
    iio.imwrite(tmp_path / "imgs" / "r_2.png", np.zeros((5, 8, 3), np.uint8))
    jf = write_transforms(tmp_path / "transforms.json", n=3, file_fmt="imgs/r_{i}.png", fl_x=5.0)
    with pytest.raises(DataError, match=r"transforms\.json: images of mixed sizes: frame 2 \(imgs/r_2.png\) is 8x5 "
                                        r"but frame 0 \(imgs/r_0.png\) is 8x6"):
        load_dataset(jf)
    (tmp_path / "imgs" / "r_2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"r_2\.png: cannot decode"):
        load_dataset(jf)


def test_image_outside_the_dataset_folder_needs_the_flag(tmp_path):
    write_images(tmp_path / "elsewhere", 1)
    (tmp_path / "scene").mkdir()
    jf = write_transforms(tmp_path / "scene" / "transforms.json", n=1, file_fmt="../elsewhere/r_{i}.png", fl_x=5.0)
    # the hint before the frame's path, which can be long (error lines are cut at a length limit)
    with pytest.raises(DataError,
                       match=r"transforms\.json: .*--allow-outside-root.*: frame 0 \(\.\./elsewhere/r_0\.png\)$"):
        load_dataset(jf)
    ds = load_dataset(jf, allow_outside_root=True)
    assert len(ds) == 1 and ds.file_paths[0].resolve() == (tmp_path / "elsewhere" / "r_0.png").resolve()


# -- cameras ----------------------------------------------------------------------------------------------------------


def test_nerf_matrix_to_ngp_keeps_axes_and_scales_translation():
    m = torch.tensor([pose(1.0, 2.0, 3.0, angle=0.4)], dtype=torch.float64)
    out = nerf_matrix_to_ngp(m, 0.5, (0.5, 0.25, 0.0))
    assert out.shape == (1, 3, 4) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0, :, :3].numpy(), m[0, :3, :3].numpy(), atol=1e-7)
    np.testing.assert_allclose(out[0, :, 3].numpy(), [1.0, 1.25, 1.5])
    assert torch.equal(nerf_matrix_to_ngp(m[:, :3], 0.5, (0.5, 0.25, 0.0)), out)


def test_centre_pixel_of_identity_camera_looks_down_minus_z():
    c2w = torch.tensor([[[1.0, 0, 0, 0.1], [0, 1, 0, 0.2], [0, 0, 1, 0.3]]])
    k = torch.tensor([[50.0, 40.0, 4.0, 3.0]])
    o, d = generate_rays(c2w, k, torch.tensor([[4.0, 3.0]]))
    np.testing.assert_allclose(o.numpy(), [[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(d.numpy(), [[0.0, 0.0, -1.0]], atol=1e-7)
    # distortion does not move the principal point
    _, d2 = generate_rays(c2w, k, torch.tensor([[4.0, 3.0]]), torch.tensor([FOX_DIST]))
    np.testing.assert_allclose(d2.numpy(), [[0.0, 0.0, -1.0]], atol=1e-7)


def test_rays_through_known_pixels_match_hand_computed_directions():
    a = 0.5  # camera rotated about +y by 0.5 rad
    c2w = torch.tensor([pose(0, 0, 0, angle=a)[:3]] * 2, dtype=torch.float32)
    k = torch.tensor([[100.0, 50.0, 40.0, 30.0]] * 2)
    px = torch.tensor([[140.0, 30.0], [40.0, 80.0]])  # 1 focal right of centre; 1 focal below centre (y down)
    _, d = generate_rays(c2w, k, px)
    cam = np.array([[1.0, 0.0, -1.0], [0.0, -1.0, -1.0]]) / math.sqrt(2)  # OpenGL: y up, looking down -z
    R = np.asarray(pose(angle=a))[:3, :3]
    np.testing.assert_allclose(d.numpy(), cam @ R.T, atol=1e-6)
    assert d.dtype == torch.float32
    np.testing.assert_allclose(torch.linalg.vector_norm(d, dim=-1).numpy(), 1.0, atol=1e-6)


def test_undistort_inverts_opencv_distortion():
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2000, 2, generator=gen) - 0.5) * torch.tensor([0.8, 1.4])  # fox's field of view
    dist = torch.tensor([FOX_DIST]).expand(2000, 4)
    xd = distort_opencv(x.double(), dist.double()).float()
    np.testing.assert_allclose(undistort(xd, dist).numpy(), x.numpy(), atol=1e-5)
    assert torch.allclose(distort(x.double(), dist.double()), distort_opencv(x.double(), dist.double()), atol=1e-12)
    # a strong lens as well
    strong = torch.tensor([[-0.3, 0.1, 0.01, -0.01]]).expand(2000, 4)
    xd = distort_opencv(x.double() * 0.7, strong.double()).float()
    np.testing.assert_allclose(undistort(xd, strong).numpy(), x.numpy() * 0.7, atol=1e-5)
    # exact identity without distortion
    assert torch.equal(undistort(x, torch.zeros(2000, 4)), x)


def distort_opencv(x, dist):
    """OpenCV's radial-tangential model, written out independently of the module."""
    u, v = x[:, 0], x[:, 1]
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = u**2 + v**2
    radial = 1 + k1 * r2 + k2 * r2**2
    xd = u * radial + 2 * p1 * u * v + p2 * (r2 + 2 * u**2)
    yd = v * radial + p1 * (r2 + 2 * v**2) + 2 * p2 * u * v
    return torch.stack([xd, yd], dim=-1)


def test_pixel_grid_is_row_major_centres():
    g = pixel_grid(3, 2)
    assert g.shape == (6, 2) and g.dtype == torch.float32
    assert g.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5]]


# -- sampling and dataset rays ----------------------------------------------------------------------------------------


def test_sample_is_seeded_and_returns_the_image_pixels(blender):
    jf, imgs = blender
    ds = load_dataset(jf)
    i1, p1, c1 = ds.sample(500, torch.Generator().manual_seed(7))
    i2, p2, c2 = ds.sample(500, torch.Generator().manual_seed(7))
    assert torch.equal(i1, i2) and torch.equal(p1, p2) and torch.equal(c1, c2)
    assert i1.dtype == torch.int64 and p1.dtype == torch.float32 and c1.shape == (500, 4)
    assert set(i1.tolist()) == {0, 1, 2}  # all images drawn
    x = (p1[:, 0] - 0.5).long()
    y = (p1[:, 1] - 0.5).long()
    assert torch.equal(p1 - 0.5, torch.stack([x, y], -1).float())  # pixel centres
    want = np.stack(imgs)[i1.numpy(), y.numpy(), x.numpy()] / 255.0  # straight alpha, not premultiplied
    np.testing.assert_allclose(c1.numpy(), want, atol=1e-7)
    _, _, c3 = ds.sample(500, torch.Generator().manual_seed(8))
    assert not torch.equal(c1, c3)


def test_dataset_rays_match_generate_rays(tmp_path):
    write_images(tmp_path / "imgs", 2)
    jf = write_transforms(tmp_path / "transforms.json", n=2, file_fmt="imgs/r_{i}.png", fl_x=5.0, fl_y=6.0,
                          k1=0.05, p2=0.001)
    ds = load_dataset(jf)
    o, d = ds.image_rays(1)
    assert o.shape == (48, 3) and d.shape == (48, 3)
    o2, d2 = generate_rays(ds.c2w[[1]].expand(48, 3, 4), ds.intrinsics[[1]].expand(48, 4), pixel_grid(8, 6),
                           ds.distortion[[1]].expand(48, 4))
    assert torch.allclose(o, o2) and torch.allclose(d, d2)
    # the ray through the principal point (4, 3) is the optical axis, undistorted
    o3, d3 = ds.rays(torch.tensor([0]), torch.tensor([[4.0, 3.0]]))
    np.testing.assert_allclose(d3[0].numpy(), -ds.c2w[0, :, 2].numpy(), atol=1e-6)


# -- real data --------------------------------------------------------------------------------------------------------


def test_real_fox_and_lego(shared_data_dir, capsys):
    fox = load_dataset(shared_data_dir / "nerf" / "fox")
    assert len(fox) == 50 and fox.n_missing == 17 and fox.aabb_scale == 4
    assert (fox.width, fox.height) == (1080, 1920) and fox.images.shape == (50, 1920, 1080, 3)
    assert not fox.white_background
    np.testing.assert_allclose(fox.intrinsics[0].numpy(), [1375.52, 1374.49, 554.558, 965.268], rtol=1e-6)
    np.testing.assert_allclose(fox.distortion[0].numpy(), FOX_DIST, rtol=1e-6)
    assert "17 of 67 frames have no image file" in capsys.readouterr().err
    # every camera centre lies inside the scene box [0.5 - 2, 0.5 + 2]^3 and looks roughly at its centre
    centres = fox.c2w[:, :, 3]
    assert torch.all((centres - 0.5).abs() < 2.0)
    view = -fox.c2w[:, :, 2]
    to_centre = torch.tensor([0.5, 0.5, 0.5]) - centres
    cos = (view * to_centre).sum(-1) / to_centre.norm(dim=-1)
    assert torch.all(cos > 0.8)

    lego = load_dataset(shared_data_dir / "nerf" / "lego_400", "train")
    assert len(lego) == 100 and lego.images.shape == (100, 400, 400, 4)
    assert lego.white_background and lego.has_alpha and lego.n_missing == 0
    np.testing.assert_allclose(lego.intrinsics[:, 0].numpy(), 555.5555, rtol=1e-5)
    np.testing.assert_allclose(lego.intrinsics[0, 2:].numpy(), [200.0, 200.0])
