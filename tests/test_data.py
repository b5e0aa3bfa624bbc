"""``fedguard.data.load_data``: built-ins, folders, .npz archives, and bad inputs."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import skimage.io
import torch

from fedguard.data import DATASETS, load_data
from fedguard.errors import InputError


def _check(x: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.ndim == 4 and y.shape == (len(x),)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and torch.isfinite(x).all()
    if shape is not None:
        assert tuple(x.shape[1:]) == shape


def test_builtin_names():
    assert DATASETS == ("digits", "images")


def test_loading_digits_leaves_pythons_random_state_as_it_was():
    """scikit-learn's first import draws from Python's generator; a caller's seeded ``random`` had moved on (a
    reproducibility review). In a fresh process, where that first import happens."""
    code = ("import random; random.seed(7); before = random.getstate(); from fedguard.data import load_data; "
            "load_data('digits'); assert random.getstate() == before")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_digits(digits):
    x, y = digits
    _check(x, y, (1, 8, 8))
    assert len(x) == 1797 and sorted(y.unique().tolist()) == list(range(10))
    assert float(x.max()) == 1.0  # 16/16
    assert torch.allclose(x * 16, torch.round(x * 16))  # values k/16


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_digits_resized(digits, shape):
    x, y = load_data("digits", shape, limit=50)
    _check(x, y, shape)
    assert len(x) == 50
    if shape[0] == 3:
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    # the resized images still look like the originals
    small = torch.nn.functional.interpolate(x[:, :1], size=(8, 8), mode="area")
    idx = torch.as_tensor(np.sort(np.random.default_rng(0).choice(1797, 50, replace=False)))
    assert torch.equal(y, digits[1][idx])
    assert (small - digits[0][idx]).abs().mean() < 0.1


def test_limit_is_a_seeded_subset(digits):
    a = load_data("digits", limit=20, seed=3)
    b = load_data("digits", limit=20, seed=3)
    c = load_data("digits", limit=20, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert len(load_data("digits", limit=10_000)[0]) == 1797  # more than there is: all of it


def test_images_builtin():
    x, y = load_data("images")
    _check(x, y, (3, 32, 32))
    assert len(set(y.tolist())) >= 8 and len(x) >= 40
    assert x.std() > 0.1  # real photographs, not blank
    g, gy = load_data("images", (1, 28, 28), limit=12, seed=1)
    _check(g, gy, (1, 28, 28))
    assert len(g) == 12


def _write_folder(root, sizes=((10, 12), (10, 12))):
    rng = np.random.default_rng(0)
    pixels = {}
    for cls, (h, w) in zip(["cat", "ant"], sizes):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 256, size=(h, w, 3) if cls == "cat" else (h, w), dtype=np.uint8)
            skimage.io.imsave(root / cls / f"{i}.png", img, check_contrast=False)
            pixels[(cls, i)] = img
    (root / "ant" / "notes.txt").write_text("not an image")
    return pixels


def test_folder_round_trip(tmp_path):
    pixels = _write_folder(tmp_path / "data")
    # hidden entries are left out: a notebook's checkpoint folder is no class (it would come first, as class 0, with
    # no images), macOS's ._ files beside the images are no images
    (tmp_path / "data" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "data" / "ant" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    x, y = load_data(str(tmp_path / "data"))
    _check(x, y, (3, 10, 12))  # grey "ant" images repeated to the colour "cat" ones
    assert y.tolist() == [0, 0, 0, 1, 1, 1]  # sorted class names: ant=0, cat=1
    assert torch.allclose(x[0, 0], torch.as_tensor(pixels[("ant", 0)] / 255.0, dtype=torch.float32))
    assert torch.equal(x[0, 0], x[0, 2])
    cat = torch.as_tensor(pixels[("cat", 1)].transpose(2, 0, 1) / 255.0, dtype=torch.float32)
    assert torch.allclose(x[4], cat)
    x1, _ = load_data(tmp_path / "data", (1, 16, 16))  # PathLike; colour -> grey, resized
    _check(x1, y, (1, 16, 16))
    # images in nested folders of a class are its images, as torchvision's ImageFolder reads them (they had been
    # left out without a word); a link back up the tree is followed once
    (tmp_path / "data" / "ant" / "more" / "deeper").mkdir(parents=True)
    skimage.io.imsave(tmp_path / "data" / "ant" / "more" / "deeper" / "9.png", pixels[("ant", 2)], check_contrast=False)
    (tmp_path / "data" / "ant" / "more" / "loop").symlink_to(tmp_path / "data" / "ant")
    skimage.io.imsave(tmp_path / "data" / "ant" / "z.png", pixels[("ant", 1)], check_contrast=False)
    x2, y2 = load_data(str(tmp_path / "data"))
    assert y2.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    # ImageFolder's order: a folder's own files by name (0, 1, 2, z), then its subfolders' (more/deeper/9)
    assert torch.equal(x2[3], x[1]) and torch.equal(x2[4], x[2])
    # a link from one class to the data folder is followed once over all classes: the other class's images had
    # come back under this class's label too
    (tmp_path / "data" / "ant" / "up").symlink_to(tmp_path / "data")
    assert load_data(str(tmp_path / "data"))[1].tolist() == y2.tolist()
    (tmp_path / "data" / "dog").symlink_to(tmp_path / "data" / "cat")  # a class that is another's folder
    with pytest.raises(InputError, match=r"class folder .*dog leads to a folder read already .*own"):
        load_data(str(tmp_path / "data"))


def test_an_image_link_to_no_file_is_named(tmp_path):
    """A dangling link to an image had dropped out of the data without a word."""
    _write_folder(tmp_path / "data")
    (tmp_path / "data" / "ant" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(InputError, match=r"image .*gone.png is a symbolic link to no file; remove it"):
        load_data(str(tmp_path / "data"))
    (tmp_path / "data" / "ant" / "gone.png").unlink()
    for name in ("aardvark", "ant.v2"):  # a class folder's link, whatever its name: every later label had shifted
        (tmp_path / "data" / name).symlink_to(tmp_path / "nowhere")
        with pytest.raises(InputError, match=rf"class folder .*{name} is a symbolic link to no folder; remove it or point "
                                             r"it at the class's images$"):  # fmt: skip
            load_data(str(tmp_path / "data"))
        (tmp_path / "data" / name).unlink()
    (tmp_path / "data" / "stray.png").symlink_to(tmp_path / "nowhere.png")  # images beside the classes are not read
    assert load_data(str(tmp_path / "data"))[1].tolist() == [0, 0, 0, 1, 1, 1]
    first = sorted((tmp_path / "data" / "ant").iterdir())[0]
    (tmp_path / "data" / "cat" / "also.png").symlink_to(first)  # one image in two classes would carry two labels
    with pytest.raises(InputError, match=r"image .*also.png is the same file as .*ant.*, in another class \(a link\); "
                                         r"give each image one class$"):  # fmt: skip
        load_data(str(tmp_path / "data"))
    (tmp_path / "data" / "cat" / "also.png").unlink()
    (tmp_path / "data" / "ant" / "again.png").symlink_to(first)  # twice in its own class: an example read twice
    assert load_data(str(tmp_path / "data"))[1].tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_a_folder_linked_from_two_classes_is_refused_and_twice_from_one_is_read_once(tmp_path):
    """A folder outside the data linked from two classes had been read as the first class's only, without a word."""
    _write_folder(tmp_path / "data")
    _write_folder(tmp_path / "elsewhere")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("no images here")
    for name in ("ant", "cat"):  # a folder without images may be linked from every class
        (tmp_path / "data" / name / "notes").symlink_to(tmp_path / "notes")
    shared = tmp_path / "elsewhere" / "ant"
    (tmp_path / "data" / "ant" / "extra").symlink_to(shared)
    (tmp_path / "data" / "ant" / "extra2").symlink_to(shared)  # twice within one class: read once
    assert load_data(str(tmp_path / "data"))[1].tolist() == [0] * 6 + [1] * 3
    (tmp_path / "data" / "cat" / "extra").symlink_to(shared)
    with pytest.raises(InputError, match=r"folder .*elsewhere/ant is reached from class folders .*data/ant and "
                                         r".*data/cat \(through a link\), so its images would carry two labels; "
                                         r"give each class a folder of its own$"):  # fmt: skip
        load_data(str(tmp_path / "data"))


def test_an_output_may_not_land_in_a_folder_a_link_in_the_data_leads_to(tmp_path):
    """A class folder that is a link to a folder elsewhere is read as data: an audit's -o there had added its PNG
    grids to the data set (the next load held them, labelled as that class)."""
    from fedguard.io import check_output_path
    from fedguard.options import input_paths

    _write_folder(tmp_path / "data")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "data" / "dog").symlink_to(tmp_path / "dogs")
    with pytest.raises(InputError, match="lies inside the input folder .*dogs"):
        check_output_path(tmp_path / "dogs" / "report.html", inputs=input_paths(data=str(tmp_path / "data")))
    check_output_path(tmp_path / "report.html", inputs=input_paths(data=str(tmp_path / "data")))


def test_netpbm_images_are_read_as_imagefolder_reads_them(tmp_path):
    """.ppm and .pgm are in torchvision's ImageFolder extensions; they had been left out without a word."""
    from PIL import Image

    for name, mode, value, suffix in (("colour", "RGB", (200, 200, 200), ".ppm"), ("grey", "L", 200, ".pgm")):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new(mode, (8, 8), value).save(tmp_path / "data" / name / f"0{suffix}")
    x, y = load_data(str(tmp_path / "data"), (3, 8, 8))
    assert y.tolist() == [0, 1] and torch.allclose(x, torch.full_like(x, 200 / 255))


def test_folder_of_mixed_sizes_needs_input_shape(tmp_path):
    _write_folder(tmp_path / "data", sizes=((10, 12), (20, 20)))
    with pytest.raises(InputError, match="different sizes.*pass input_shape C,H,W"):
        load_data(str(tmp_path / "data"))
    x, y = load_data(str(tmp_path / "data"), (3, 16, 16))
    _check(x, y, (3, 16, 16))


def test_gif_palette_and_cmyk_image_files_load_as_their_colours(tmp_path):
    """A one-frame GIF (read as a frame axis, it was refused), an animation (its first frame), a palette PNG and an
    Adobe CMYK JPEG (read raw, its colours came out inverted: 200,50,10 as 55,205,245) all load as their RGB."""
    from PIL import Image

    colour = np.zeros((8, 8, 3), np.uint8)
    colour[...] = (200, 50, 10)
    other = np.full((8, 8, 3), 90, np.uint8)
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    Image.fromarray(colour).save(tmp_path / "d" / "a" / "one.gif")
    frames = [Image.fromarray(colour), Image.fromarray(other)]
    frames[0].save(tmp_path / "d" / "a" / "two.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(colour).convert("P").save(tmp_path / "d" / "b" / "palette.png")
    Image.fromarray(colour).convert("CMYK").save(tmp_path / "d" / "b" / "cmyk.jpg", quality=100)
    x, y = load_data(tmp_path / "d")
    _check(x, y, (3, 8, 8))
    assert y.tolist() == [0, 0, 1, 1]
    for i, tolerance in enumerate((1, 1, 1, 15)):  # the JPEG is lossy (204, 51, 0); inverted it was off by 150+
        assert np.abs(x[i, :, 4, 4].numpy() * 255 - (200, 50, 10)).max() <= tolerance, i


def test_grey_alpha_upper_case_and_32_bit_integer_image_files_load(tmp_path):
    """A grey + alpha PNG is one grey channel, its alpha dropped (not two channels); X.PNG, as cameras name
    files, is an image; a grey TIFF that Pillow opens in its 32-bit integer mode I, values up to 30000, reads as 16-bit
    pixels, 30000 / 65535 (not refused as integers beyond 255)."""
    from PIL import Image

    for name in "abc":
        (tmp_path / "d" / name).mkdir(parents=True)
    Image.fromarray(np.dstack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 255, np.uint8)])).save(tmp_path / "d" / "a" / "x.png")
    Image.fromarray(np.full((4, 4), 100, np.uint8)).save(tmp_path / "d" / "b" / "X.PNG")
    Image.fromarray(np.full((4, 4), 30000, np.int32)).save(tmp_path / "d" / "c" / "x.tif")
    for file, mode in (("a/x.png", "LA"), ("c/x.tif", "I")):
        with Image.open(tmp_path / "d" / file) as im:
            assert im.mode == mode
    x, y = load_data(tmp_path / "d")
    _check(x, y, (1, 4, 4))
    assert y.tolist() == [0, 1, 2]
    assert torch.allclose(x.amax((1, 2, 3)), torch.tensor([200 / 255, 100 / 255, 30000 / 65535]))


def test_twelve_bit_pixels_in_a_sixteen_bit_png_are_refused_full_range_ones_read(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    skimage.io.imsave(tmp_path / "d" / "a" / "x.png", np.full((4, 4), 4000, np.uint16), check_contrast=False)
    with pytest.raises(InputError, match=r"x.png is 16-bit with values up to 4000: 8- to 12-bit pixels .* re-save it as 8-bit"):
        load_data(tmp_path / "d")
    skimage.io.imsave(tmp_path / "d" / "a" / "x.png", np.full((4, 4), 65535 // 5, np.uint16), check_contrast=False)
    x, _ = load_data(tmp_path / "d")
    assert torch.allclose(x, torch.full_like(x, 0.2))


def test_large_images_are_shrunk_while_read_to_what_a_full_size_resize_gives(tmp_path, monkeypatch):
    """A folder's images are decoded one at a time, the limit drawn before decoding, and big ones reduced by whole
    factors to twice the input shape first: the result matches resizing the full-size image."""
    import fedguard.data
    from fedguard.data import _fit

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, size=(30, 40, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 1200x1600
    (tmp_path / "d" / "a").mkdir(parents=True)
    for i in range(5):
        skimage.io.imsave(tmp_path / "d" / "a" / f"{i}.png", np.roll(smooth, 40 * i, axis=1), check_contrast=False)
    opened = []
    real = fedguard.data._image_file
    monkeypatch.setattr(fedguard.data, "_image_file", lambda f, size: opened.append(f.name) or real(f, size))
    x, y = load_data(tmp_path / "d", (3, 30, 40), limit=2, seed=0)
    assert len(opened) == 2 and len(y) == 2
    first = int(opened[0].split(".")[0])
    full = _fit(np.roll(smooth, 40 * first, axis=1).transpose(2, 0, 1)[None] / 255.0, (3, 30, 40), "full size")
    assert float((x[0] - full[0]).abs().mean()) < 0.01


def test_npz_labels_as_a_column_and_bool_images_load(tmp_path):
    """Labels of shape (N, 1), as a column sliced from a table, are the N labels; bool images are 0 and 1 (True 1.0)."""
    np.savez(tmp_path / "d.npz", x=np.eye(4, dtype=bool)[None].repeat(3, 0), y=np.arange(3)[:, None])
    x, y = load_data(tmp_path / "d.npz")
    _check(x, y, (1, 4, 4))
    assert y.tolist() == [0, 1, 2] and torch.equal(x[:, 0], torch.eye(4).expand(3, 4, 4))


def test_an_input_shape_too_large_for_the_images_is_refused_before_any_is_decoded(tmp_path, monkeypatch):
    """A folder's images and the built-in photographs are counted against the memory the input shape asks for before
    the first one is opened (decoded first, a folder of thousands would be read whole to be refused)."""
    import fedguard.data

    _write_folder(tmp_path / "data")  # 6 images: 6 x 3x16x16 values
    monkeypatch.setattr(fedguard.data, "MAX_DATA_VALUES", 1000)  # stands for 8 GiB
    opened = []
    real = fedguard.data._image_file
    monkeypatch.setattr(fedguard.data, "_image_file", lambda f, size: opened.append(f.name) or real(f, size))
    for spec in (tmp_path / "data", "images"):
        with pytest.raises(InputError, match=r"images at input shape 3x16x16 would take 0 GiB; use a smaller"):
            load_data(spec, (3, 16, 16))
        assert opened == [], spec


def test_big_endian_arrays_read_as_native_ones(tmp_path):
    """'>u2' is not np.uint16: big-endian 16-bit pixels had been refused as integers beyond 255."""
    native = (np.arange(6 * 64).reshape(6, 8, 8) * 100).astype(np.uint16)
    np.savez(tmp_path / "le.npz", x=native, y=np.arange(6))
    np.savez(tmp_path / "be.npz", x=native.astype(">u2"), y=np.arange(6).astype(">i8"))
    (x_le, y_le), (x_be, y_be) = load_data(tmp_path / "le.npz"), load_data(tmp_path / "be.npz")
    assert torch.equal(x_le, x_be) and torch.equal(y_le, y_be)


def test_npz_uint8_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(6, 9, 9), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    xs, ys = load_data(str(tmp_path / "d.npz"))
    _check(xs, ys, (1, 9, 9))
    assert torch.allclose(xs[:, 0], torch.as_tensor(x / 255.0, dtype=torch.float32))
    assert ys.tolist() == y.tolist()
    xr, _ = load_data(str(tmp_path / "d.npz"), (3, 18, 18))
    _check(xr, ys, (3, 18, 18))


def test_an_in_memory_batch_keeps_uint8_as_0_to_255():
    """From Python as from an .npz: uint8 pixels are 0-255 (they had been read as floats and refused as out of range)."""
    from fedguard.data import in_memory_batch

    pixels = torch.arange(2 * 64, dtype=torch.uint8).reshape(2, 1, 8, 8) * 2
    x, y = in_memory_batch((pixels, torch.arange(2)))
    assert x.dtype == torch.float32 and torch.equal(x, pixels.float() / 255) and y.tolist() == [0, 1]
    half, labels = in_memory_batch((torch.full((2, 1, 8, 8), 0.5, dtype=torch.bfloat16), torch.tensor([0, 1.0]).bfloat16()))
    assert half.dtype == torch.float32 and bool((half == 0.5).all()) and labels.tolist() == [0, 1]  # numpy has no bfloat16
    with pytest.raises(InputError, match=r"data x has shape \(2, 1, 0, 8\), images without pixels"):
        in_memory_batch((torch.zeros(2, 1, 0, 8), [0, 1]))


def test_npz_float_round_trip(tmp_path):
    x = np.random.default_rng(2).random((5, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.arange(5, dtype=np.float64))
    xs, ys = load_data(str(tmp_path / "f.npz"))
    _check(xs, ys, (3, 8, 8))
    assert torch.equal(xs, torch.as_tensor(x)) and ys.tolist() == [0, 1, 2, 3, 4]
    # channels-last arrays, as numpy images usually are, are accepted too
    np.savez(tmp_path / "hwc.npz", x=x.transpose(0, 2, 3, 1), y=np.arange(5))
    assert torch.equal(load_data(str(tmp_path / "hwc.npz"))[0], xs)
    # with alpha, which is dropped as in image files; and tiny 4x4 RGB, whose 4 rows are not 4 channels
    rgba = np.concatenate([x.transpose(0, 2, 3, 1), np.ones((5, 8, 8, 1), np.float32)], axis=3)
    np.savez(tmp_path / "rgba.npz", x=rgba, y=np.arange(5))
    assert torch.equal(load_data(str(tmp_path / "rgba.npz"))[0], xs)
    np.savez(tmp_path / "tiny.npz", x=x[:, :, :4, :4].transpose(0, 2, 3, 1), y=np.arange(5))
    assert torch.equal(load_data(str(tmp_path / "tiny.npz"))[0], xs[:, :, :4, :4])


# --------------------------------------------------------------------------- bad inputs


def _npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


GOOD_X = np.zeros((4, 8, 8), dtype=np.uint8)
GOOD_Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"y": GOOD_Y}, r"no array x .*np.savez"),
        ({"x": GOOD_X}, r"no array y .*np.savez"),
        ({"images": GOOD_X}, r"no array x or y \(it has: images\)"),
        ({"x": GOOD_X, "y": GOOD_Y[:3]}, r"3 labels but x has 4 examples"),
        ({"x": np.full((4, 8, 8), np.nan, np.float32), "y": GOOD_Y}, r"NaN or infinite"),
        ({"x": np.full((4, 8, 8), 255.0, np.float32), "y": GOOD_Y}, r"values lie in \[255, 255\].*\[0, 1\]"),
        ({"x": np.full((4, 8, 8), 300, np.int64), "y": GOOD_Y}, r"integers in \[300, 300\].*uint8"),
        ({"x": np.full((4, 8, 8), 256, np.int64), "y": GOOD_Y}, r"integers in \[256, 256\].*uint8"),  # one past 8 bits
        ({"x": np.eye(8, dtype=np.int64)[None].repeat(4, 0), "y": GOOD_Y}, r"only the integers 0 and 1.*bool or floats 0-1"),
        ({"x": np.eye(8, dtype=np.uint8)[None].repeat(4, 0), "y": GOOD_Y}, r"only the integers 0 and 1.*read as black"),
        # the digits' levels 0-16 as uint8 had read as at most 16/255 and lowered an audit's verdict
        ({"x": (np.arange(64).reshape(8, 8) % 17).astype(np.uint8)[None].repeat(4, 0), "y": GOOD_Y},
         r"holds integers up to 16: as 8-bit pixels they would read as nearly black \(at most 16/255\); scale them to floats "
         r"0-1 \(x / 16 for levels 0-16, x / 255 for dark 8-bit images\)$"),
        ({"x": np.full((4, 8, 8), 31, np.int64), "y": GOOD_Y}, r"holds integers up to 31"),
        ({"x": np.full((4, 8, 8), 20, np.uint16), "y": GOOD_Y}, r"is 16-bit with values up to 20"),  # not the 8-bit words
        ({"x": GOOD_X, "y": np.array([0, -1, 0, 1])}, r"negative labels"),
        ({"x": GOOD_X, "y": np.array([0, 0.5, 0, 1])}, r"non-integer labels"),
        ({"x": GOOD_X, "y": np.array([0, 1e20, 0, 1])}, r"labels up to 100000000000000000000, beyond any class"),  # had wrapped
        ({"x": GOOD_X, "y": np.array([0, 2.0**63, 0, 1])}, r"labels up to 9223372036854775808, beyond any class"),
        ({"x": GOOD_X, "y": np.array([0, 2**63, 0, 1], np.uint64)}, r"labels up to 9223372036854775808, beyond any class"),
        ({"x": GOOD_X, "y": np.array([0, np.inf, 0, 1])}, r"non-integer labels"),  # not a class, nor an OverflowError
        ({"x": GOOD_X, "y": np.eye(4)}, r"one integer class label per example"),
        ({"x": np.zeros((4, 8), np.uint8), "y": GOOD_Y}, r"N,H,W or N,C,H,W \(rows of features as N,1,F"),
        ({"x": np.zeros((0, 8, 8), np.uint8), "y": GOOD_Y[:0]}, r"no examples"),
        ({"x": np.zeros((4, 1, 0, 8), np.float32), "y": GOOD_Y}, r"shape \(4, 1, 0, 8\), images without pixels"),
        ({"x": np.zeros((4, 0, 8), np.uint16), "y": GOOD_Y}, r"images without pixels"),
    ],
)
def test_bad_npz(tmp_path, arrays, match):
    with pytest.raises(InputError, match=match) as err:
        load_data(_npz(tmp_path, **arrays))
    assert "\n" not in str(err.value)


def test_channels_colour_arrays_turn_grey_and_others_cannot_be_matched(tmp_path):
    """Colour arrays for a one-channel architecture turn grey as image files do; the error had suggested an
    --input-shape of the data's channels, with which inspect then called a benign model drifted (FG701)."""
    colour = np.zeros((4, 3, 8, 8), np.uint8)
    colour[:, 0], colour[:, 1], colour[:, 2] = 255, 128, 0
    x, _ = load_data(_npz(tmp_path, x=colour, y=GOOD_Y), (1, 8, 8))
    assert torch.allclose(x, torch.full_like(x, 0.299 + 0.587 * 128 / 255))
    path = _npz(tmp_path, x=np.zeros((4, 2, 8, 8), np.uint8), y=GOOD_Y)
    with pytest.raises(InputError, match=r"2-channel images but the architecture takes 3 \(input shape 3,8,8\); give 3-channel or 1-channel data \(channels-first arrays keep every channel: if the last is alpha, drop it, x\[:, :1\]\)$"):
        load_data(path, (3, 8, 8))
    path = _npz(tmp_path, x=np.zeros((4, 8, 8, 5), np.uint8), y=GOOD_Y)  # five channels last are not read as such
    with pytest.raises(InputError, match=re.escape("has 8-channel images (shape (4, 8, 8, 5) read as N,C,H,W) but the")):
        load_data(path, (1, 8, 8))


def test_missing_path_and_unknown_name(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"does not exist; check the path"):
        load_data(str(tmp_path / "nowhere.npz"))
    monkeypatch.chdir(tmp_path)  # a file name alone, no folder: a path still, not a data set's name
    with pytest.raises(InputError, match=r"data path nowhere.npz does not exist; check the path"):
        load_data("nowhere.npz")
    with pytest.raises(InputError, match=r"does not exist"):
        load_data(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match=r"unknown data set 'cifar10'; use one of digits, images"):
        load_data("cifar10")


def test_a_local_folder_named_like_a_built_in_set_is_ambiguous(tmp_path, monkeypatch):
    """``--data digits`` with a folder ``digits`` here (or `` digits``) had silently read the built-in set."""
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / "digits")
    for spec in ("digits", " digits"):
        with pytest.raises(InputError, match=r"spec digits names the built-in data set, but '.*digits' is also a file or folder here; write ./"):
            load_data(spec)
    x, y = load_data("./digits")
    assert len(y) == 6


def test_bad_files_and_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"is empty; put one subfolder of images per class"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "flat").mkdir()
    skimage.io.imsave(tmp_path / "flat" / "a.png", np.zeros((4, 4), np.uint8), check_contrast=False)
    with pytest.raises(InputError, match=r"no class subfolders"):
        load_data(str(tmp_path / "flat"))
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match=r"class folder .*cls has no images"):
        load_data(str(tmp_path / "noimg"))
    (tmp_path / "corrupt" / "cls").mkdir(parents=True)
    (tmp_path / "corrupt" / "cls" / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"cannot read image .*x.png"):
        load_data(str(tmp_path / "corrupt"))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(InputError, match=r"unsupported data file"):
        load_data(str(tmp_path / "data.csv"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"junk.npz is not an .npz \(zip\) archive"):
        load_data(str(tmp_path / "junk.npz"))


@pytest.mark.parametrize("kwargs,match", [({"limit": 0}, "limit"), ({"limit": 2.5}, "limit"), ({"input_shape": (1, 8)}, "C,H,W")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        load_data("digits", **kwargs)


def test_nothing_is_downloaded(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("load_data tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    _check(*load_data("images", limit=4))
    _check(*load_data("digits", limit=4))


def test_an_output_that_is_an_input_under_another_name_is_refused_even_with_force(tmp_path):
    """A symbolic or hard link to the model is the model: writing a report to the one would overwrite the other (a
    hard link had been told to pass --force, as a file of the user's)."""
    import os

    from fedguard.io import check_output_path

    (tmp_path / "model.pt").write_bytes(b"weights")
    (tmp_path / "link.pt").symlink_to(tmp_path / "model.pt")
    os.link(tmp_path / "model.pt", tmp_path / "hard.pt")
    for output, given in (("model.pt", "link.pt"), ("link.pt", "model.pt"), ("hard.pt", "model.pt")):
        with pytest.raises(InputError, match="is also an input and would be overwritten"):
            check_output_path(tmp_path / output, inputs=[tmp_path / given], force=True)
    assert (tmp_path / "model.pt").read_bytes() == b"weights"


def test_an_npz_whose_images_as_float32_outgrow_the_memory_is_refused_before_converting(tmp_path, monkeypatch):
    """A compressed member of zeros holds far more than its size on disk, and its images take four bytes a pixel
    once read: 2.5 MB of uint8 zeros declare 2.4 GiB of pixels, which took about 22 GiB to convert."""
    import fedguard.io

    path = _npz(tmp_path, x=np.zeros((4, 8, 8), np.uint8), y=GOOD_Y)  # 256 bytes stored, 1 KiB as float32
    import fedguard.data

    converted = []
    monkeypatch.setattr(fedguard.data, "_unit_range", lambda *args, **kwargs: converted.append(args))
    monkeypatch.setattr(fedguard.io, "physical_memory", lambda: 1500)  # the stored images fit, twice; as float32 not
    with pytest.raises(InputError, match=r"bad.npz needs 0.0 GiB of memory to read as float32 images, more than this "
                                         r"machine's memory \(0.0 GiB\)"):  # fmt: skip
        load_data(path)
    assert converted == []


def test_a_data_path_with_spaces_in_its_name_is_read_as_given(tmp_path, monkeypatch):
    """The spaces around --data had been stripped: " x.npz" read x.npz beside it (or did not exist)."""
    monkeypatch.chdir(tmp_path)
    np.savez("x.npz", x=np.zeros((4, 8, 8), np.uint8), y=GOOD_Y)
    np.savez(" x.npz", x=np.full((3, 8, 8), 255, np.uint8), y=GOOD_Y[:3])
    x, _ = load_data(" x.npz")
    assert len(x) == 3 and bool((x == 1).all())
    assert len(load_data("x.npz ")[0]) == 4  # no such file: a space pasted after the name is dropped


def test_an_image_without_read_permission_is_said_so(tmp_path, monkeypatch):
    """The advice had been to remove or re-save a file whose only fault was its permissions."""
    from PIL import Image

    _write_folder(tmp_path / "data")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(InputError, match=r"cannot read image .*\.png \(permission denied\); check its permissions$"):
        load_data(str(tmp_path / "data"))


def test_flat_images_are_refused_by_the_checks_and_attacks_that_read_them(tmp_path):
    """Every image one value (1x1 pixels resized, as a bad-input sweep gave): an honest, freshly initialised LeNet-5
    read as malicious on them (FG804) on four seeds. inspect --data and the audit refuse them; a single flat image
    beside real ones is data like any other."""
    from fedguard.audit import audit
    from fedguard.inspect import inspect_model
    from tests.helpers import lenet8

    torch.save(lenet8().state_dict(), tmp_path / "m.pt")
    tiny = (torch.rand(40, 1, 1, 1).expand(40, 1, 8, 8), torch.arange(40) % 10)
    message = r"every image in data is one flat value \(8x8 pixels of one brightness"
    with pytest.raises(InputError, match=message):
        inspect_model(tmp_path / "m.pt", arch="lenet", input_shape=(1, 8, 8), data=tiny)
    with pytest.raises(InputError, match=message):
        audit(arch="lenet", input_shape=(1, 8, 8), data=tiny, attacks=["idlg"], device="cpu")
    np.savez(tmp_path / "flat.npz", x=np.full((20, 1, 1, 1), 0.5, np.float32), y=np.arange(20) % 10)
    with pytest.raises(InputError, match="every image in data is one flat value"):
        inspect_model(tmp_path / "m.pt", arch="lenet", input_shape=(1, 8, 8), data=str(tmp_path / "flat.npz"))
    x, y = load_data("digits", (1, 8, 8))
    x[0] = 0.5  # one blank image among real ones
    report = inspect_model(tmp_path / "m.pt", arch="lenet", input_shape=(1, 8, 8), data=(x[:64], y[:64]))
    assert report.verdict == "clean"


def test_a_link_that_leads_nowhere_is_said_to_be_one_wherever_a_path_is_read(tmp_path):
    """A looping link had read as an unknown built-in data set (--data) or as a missing file (--model, a rounds file);
    inspect's model path already said what it is."""
    from fedguard.audit import audit
    from fedguard.io import read_npz

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    said = "loop is a symbolic link that leads to no file (a loop or a missing target); pass the file itself"
    with pytest.raises(InputError, match=re.escape(f"data path {tmp_path / 'loop'} {said[5:]}")):
        load_data(str(tmp_path / "loop"))
    with pytest.raises(InputError, match=re.escape(said)):
        audit(arch="lenet", model=str(tmp_path / "loop"), data="digits", attacks=["idlg"], device="cpu")
    with pytest.raises(InputError, match=re.escape(said)):
        read_npz(tmp_path / "loop", "save it with numpy.savez")
    with pytest.raises(InputError, match="does not exist; check the path"):
        audit(arch="lenet", model=str(tmp_path / "gone.pt"), data="digits", attacks=["idlg"], device="cpu")


def test_an_output_name_too_long_for_the_file_system_is_said_to_be_so(tmp_path):
    """A name the file system takes (255 bytes) had been refused as a folder that takes no new files (the temporary
    file's name, longer by a dot, a random part and .tmp, was the one too long); a longer one is named as such."""
    from fedguard.io import check_output_path, write_atomic

    longest = tmp_path / ("r" * 250 + ".json")
    write_atomic(check_output_path(longest), "{}")
    assert longest.read_text() == "{}"
    with pytest.raises(InputError, match=r"--output r{24}\.\.\.r+\.jsonx: a file name of 256 bytes, over the 255 this "
                                         r"file system takes; choose a shorter name"):
        check_output_path(tmp_path / ("r" * 250 + ".jsonx"))


def test_dark_integer_pixels_from_one_eighth_of_the_range_read_as_8_bit(tmp_path):
    """Integers up to 31 are refused as a coarser scale's levels (above); from 32 they are dark 8-bit pixels."""
    from fedguard.data import COARSE_LEVELS

    x, _ = load_data(_npz(tmp_path, x=np.full((4, 8, 8), COARSE_LEVELS, np.uint8), y=GOOD_Y))
    assert torch.allclose(x, torch.full_like(x, COARSE_LEVELS / 255))
