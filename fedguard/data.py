"""The client's own data, for behavioural checks and for audits.

``load_data(spec)`` returns float32 inputs ``[N, C, H, W]`` in ``[0, 1]`` and
int64 labels. ``spec`` is one of:

* ``digits`` -- scikit-learn's 8x8 handwritten digits (1797 images, 10 classes);
* ``images`` -- square crops of photographs that ship inside scikit-image
  (``skimage.data``: astronaut, camera, chelsea the cat, coffee, rocket, ...);
  the label is the index of the source photograph;
* a folder whose subfolders are the classes (sorted names -> labels 0, 1, ...,
  as torchvision's ``ImageFolder`` numbers them) holding image files (nested
  folders within a class included, as ``ImageFolder`` reads them), read with
  Pillow (first frame of an animation, alpha dropped, CMYK and palettes to RGB);
  a local file or folder named like a built-in set is refused as ambiguous;
* a ``.npz`` archive with arrays ``x`` (``N,H,W``, ``N,C,H,W`` or ``N,H,W,C``
  with alpha dropped; uint8 0-255 or float 0-1) and ``y`` (integer labels).

With ``input_shape`` (C, H, W) the images are resized (bilinear, antialiased
when shrinking) and 1-channel data is repeated to C channels; colour images
(files, arrays, the built-in photographs) are turned to grey when C is 1. Nothing is
ever downloaded. Every bad input raises :class:`InputError` naming the problem
and the fix.
"""

from __future__ import annotations

import math
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fedguard import checks
from fedguard.architectures import check_input_shape
from fedguard.errors import InputError, did_you_mean, keyword_names, kind_of
from fedguard.io import missing, read_npz, refuse_beyond_memory

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "data_source", "load_data"]

DATASETS: tuple[str, ...] = ("digits", "images")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

# Photographs shipped inside the scikit-image wheel (never fetched with pooch).
_SKIMAGE_FILES = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg",
    "coins.png", "moon.png", "page.png", "brick.png", "grass.png",
)  # fmt: skip
_CROPS_PER_IMAGE = 8
#: The most float32 values the loaded data may take once resized to the input shape (8 GiB): beyond it a large
#: --input-shape would ask for more memory than the machine has and die in the allocator.
MAX_DATA_VALUES = 2**31
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def in_memory_batch(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` given as tensors or arrays, checked as a loaded data set is: float32 ``[N, C, H, W]`` in [0, 1],
    int64 ``[N]`` class indices, ``N >= 1`` (InputError saying what is wrong otherwise)."""
    fix = "pass (x, y): x of shape [N, C, H, W] with values in [0, 1], y of N integer class labels"
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InputError(f"data is {kind_of(data)}{f' of {len(data)}' if isinstance(data, (tuple, list)) else ''}; {fix}")
    try:
        x = torch.as_tensor(data[0]).detach()  # a batch that requires grad is read as values; uint8 stays 0-255
        x = x.float() if x.is_floating_point() else x  # float16 and bfloat16, which numpy lacks or reads oddly
        y = torch.as_tensor(data[1]).detach()
        y = y.double() if y.is_floating_point() else y  # bfloat16 and float8 labels, which numpy lacks (checked whole below)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"data holds {kind_of(data[0])} and {kind_of(data[1])}, not arrays; {fix}") from None
    for t, what in ((x, "x"), (y, "y")):
        if t.is_meta or t.layout != torch.strided:  # no values to read, or a sparse layout numpy cannot take
            raise InputError(f"data {what} is a {'meta' if t.is_meta else str(t.layout).removeprefix('torch.')} tensor; {fix}, as dense tensors with values")
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y) or len(y) == 0:
        raise InputError(f"data has x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}; {fix}")
    labels = _labels(y.cpu().numpy(), len(x), "data y")  # the checks an .npz's arrays get
    return torch.from_numpy(_unit_range(x.cpu().numpy(), "data x")), torch.from_numpy(labels)


def data_source(spec: str | os.PathLike[str] | None) -> Path | None:
    """The file or folder ``spec`` names, when it names one that exists; None for the built-in data sets."""
    text = None if spec is None else _spec_text(str(spec))
    if text is None or text in DATASETS:
        return None
    path = Path(text).expanduser()
    return path if path.exists() else None


def _spec_text(spec: str) -> str:
    """``spec`` as given when a file or folder has that very name (``" x.npz"``), else without the spaces around it
    (a name pasted with a space after it)."""
    return spec if os.path.lexists(spec) else spec.strip()


def data_sha256(spec: Any) -> str | None:
    """The SHA-256 of the file ``spec`` names (an .npz), for a report's provenance; None for anything else (a
    built-in set, a folder, tensors in memory)."""
    from fedguard.loading import sha256_of

    source = data_source(spec) if isinstance(spec, (str, os.PathLike)) else None
    return sha256_of(source) if source is not None and source.is_file() else None


@keyword_names(aliases={"--data": "spec"})
def load_data(
    spec: str | os.PathLike[str],
    input_shape: Any = None,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the client's data as ``(x, y)``: float32 ``[N, C, H, W]`` in [0, 1], int64 ``[N]``.

    ``input_shape`` resizes and matches channels (see the module docstring);
    ``limit`` keeps a random subset of that size drawn with ``seed`` (in the
    source order; all of the data when it has fewer examples).
    """
    shape = check_input_shape(input_shape) if input_shape is not None else None
    checks.seed(seed, "seed")
    if limit is not None and not checks.is_count(limit):
        raise InputError(f"bad data limit {limit!r}; give a positive number of examples such as 64")
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        what = f"--data is {kind_of(spec)}" if not isinstance(spec, str) else f"bad --data {spec!r}"
        raise InputError(f"{what}; use one of {', '.join(DATASETS)}, a folder of class subfolders or a .npz file "
                         "(from Python, audit and inspect_model take a pair (x, y) of tensors too)")
    text = _spec_text(spec)
    if text in DATASETS and os.path.lexists(text):
        raise InputError(f"--data {text} names the built-in data set, but {text!r} is also a file or folder here; "
                         f"write ./{text} for yours, or use the built-in set from another folder")  # fmt: skip
    if text == "digits":
        x, y = _digits()
    elif text == "images":
        x, y = _skimage_photos(shape or (3, 32, 32))
    else:
        path = Path(checks.utf8_path(text, "the data")).expanduser()
        if path.is_dir():
            files, y = _folder_files(path)
            keep = _kept(len(y), limit, seed)
            files, y = [files[i] for i in keep], y[keep]
            size = shape[1:] if shape is not None else None
            x = _stack_images((_image_file(f, size) for f in files), len(files), shape, f"data folder {path}")
        elif path.is_file():
            if path.suffix.lower() != ".npz":
                raise InputError(f"unsupported data file {text}; give a .npz with arrays x and y, or a folder of class subfolders")
            x, y = _npz(path)
        elif path.exists():  # a pipe, a device, a socket
            raise InputError(f"data path {text} is not a regular file or folder; give a .npz file or a folder of class subfolders")
        elif os.sep in text or "/" in text or path.suffix or path.is_symlink():
            raise missing(f"data path {text}", path, f"check the path (built-in data: {', '.join(DATASETS)})")
        else:
            raise InputError(f"unknown data set {text!r}{did_you_mean(text, DATASETS)}; use one of {', '.join(DATASETS)}, a folder of class subfolders, or a .npz file")
    keep = _kept(len(y), limit, seed)
    if len(keep) < len(y):  # a folder's were drawn before decoding
        x, y = x[keep], y[keep]
    if shape is not None:
        _check_size(len(y), shape, f"data {text}")
    return _fit(x, shape, text), torch.as_tensor(y, dtype=torch.int64)


# --------------------------------------------------------------------------- helpers


def _kept(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the examples ``limit`` keeps: a random subset drawn with ``seed``, in the source order (all ``n``
    when there are no more than ``limit``)."""
    if limit is None or int(limit) >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


def refuse_flat(x: torch.Tensor, what: str) -> None:
    """InputError when every image in ``x`` is one flat value (1x1 pixels resized, or blank images): read on such
    data an honest, freshly initialised LeNet-5 had units that fire for single examples (FG804, malicious), and an
    attack rebuilds nothing an image shows."""
    flat = x.flatten(1)
    if len(x) and flat.shape[1] > 1 and bool((flat.amax(1) == flat.amin(1)).all()):
        raise InputError(f"every image in {what} is one flat value ({'x'.join(map(str, x.shape[2:]))} pixels of one "
                         "brightness, as 1x1 images resized are); give real images of the kind you train on")


def _check_size(n: int, shape: tuple[int, int, int], what: str) -> None:
    """InputError when ``n`` images at ``shape`` would take more than :data:`MAX_DATA_VALUES` values."""
    if n * math.prod(shape) > MAX_DATA_VALUES:
        raise InputError(
            f"{what}: {n} images at input shape {'x'.join(map(str, shape))} would take "
            f"{n * math.prod(shape) * 4 / 2**30:,.0f} GiB; use a smaller --input-shape or fewer images"
        )


def _fit(x: np.ndarray | torch.Tensor, shape: tuple[int, int, int] | None, what: str) -> torch.Tensor:
    """Match channels (1 -> C only) and resize to ``shape``; returns float32 in [0, 1]."""
    t = torch.as_tensor(x, dtype=torch.float32)
    if shape is None:
        return t.contiguous()
    c, h, w = shape
    if c == 1 and t.shape[1] == 3:  # colour to grey, as for image files
        t = torch.einsum("c,nchw->nhw", torch.from_numpy(_GREY), t)[:, None].clamp_(0.0, 1.0)  # rounding may stray past 1
    if t.shape[1] != c:
        if t.shape[1] != 1:  # the input shape is the architecture's: changing it to fit the data would change the model
            raise InputError(
                f"{what} has {t.shape[1]}-channel images{'' if t.shape[1] <= 4 else f' (shape {tuple(t.shape)} read as N,C,H,W)'} "
                f"but the architecture takes {c} (input shape {c},{h},{w}); "
                f"give {c}-channel{' or 1-channel' if c != 1 else ''} data"
                + (f" (channels-first arrays keep every channel: if the last is alpha, drop it, x[:, :{t.shape[1] - 1}])"
                   if t.shape[1] in (2, 4) else "")  # channels-last ones lose alpha, as image files do
            )
        t = t.expand(-1, c, -1, -1)
    if tuple(t.shape[2:]) != (h, w):  # resampling may stray a rounding error outside [0, 1]
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return t.contiguous()


#: Integer pixels whose largest value in the data is below this are refused as 8-bit (levels 0-16, the digits' scale,
#: and 4-bit 0-15 would read as at most 6 % of the range).
COARSE_LEVELS = 32


def _unit_range(a: np.ndarray, what: str, image_file: bool = False) -> np.ndarray:
    """uint8/uint16/other ints (0-255) or floats (0-1) -> float32 in [0, 1].

    Integers that are all 0 or 1 (both present) in an array are refused: a
    binary image stored that way would read as black (1/255), and an 8-bit
    image that dark is unlikely. So are integers whose largest is under
    :data:`COARSE_LEVELS`: levels of a coarser scale (scikit-learn's digits
    are 0-16) read as 8-bit pixels had lowered an audit's verdict from block
    to warn, and data whose brightest pixel is under 1/8 of the 8-bit range
    is unlikely too.

    uint16 is 0-65535 (16-bit PNG, TIFF, arrays). It is ambiguous when every
    value is below 4096: 8-, 10- or 12-bit pixels stored in 16 bits (medical
    and camera exports) would read as almost black (at most 1/16 of the
    range), and a 16-bit image that dark is unlikely, so that is an error
    asking for a scale, in an image file as in an array.
    """
    if a.size == 0:  # the callers refuse N = 0 first: here an image dimension is 0
        raise InputError(f"{what} has shape {tuple(a.shape)}, images without pixels; store images of at least 1x1 pixel")
    if not a.dtype.isnative:  # big-endian (a TIFF's I;16B, an array saved on such a machine): '>u2' is no np.uint16
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer) and not image_file and int(a.max()) == 1 and int(a.min()) == 0:
        raise InputError(f"{what} holds only the integers 0 and 1: as 8-bit pixels they would read as black; store "
                         "binary images as bool or floats 0-1, 8-bit images as uint8 0-255")  # fmt: skip
    if (np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint16 and not image_file  # uint16: its own check below
            and 1 < int(a.max()) < COARSE_LEVELS and int(a.min()) >= 0):
        top = int(a.max())
        raise InputError(f"{what} holds integers up to {top}: as 8-bit pixels they would read as nearly black (at most "
                         f"{top}/255); scale them to floats 0-1 (x / {top} for levels 0-{top}, x / 255 for dark 8-bit "
                         "images)")  # fmt: skip
    if a.dtype == np.uint8:
        return _scaled(a, 255.0)
    if a.dtype == np.uint16:
        if int(a.max()) < 4096:
            fix = ("re-save it as 8-bit, or scaled to the full 16-bit range" if image_file else
                   "store 8-bit pixels as uint8, or scale to 0-65535 or to floats 0-1")  # fmt: skip
            raise InputError(f"{what} is 16-bit with values up to {int(a.max())}: 8- to 12-bit pixels stored in 16 bits "
                             f"would read as almost black; {fix}")  # fmt: skip
        return _scaled(a, 65535.0)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{what} holds integers in [{lo}, {hi}]; store images as uint8 0-255 or floats 0-1")
        return _scaled(a, 255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"{what} has dtype {a.dtype}; store images as uint8 0-255 or floats 0-1")
    if not np.isfinite(a).all():
        raise InputError(f"{what} contains NaN or infinite values; replace them with values in [0, 1]")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(f"{what} values lie in [{lo:.4g}, {hi:.4g}]; scale floats to [0, 1] or store uint8 0-255")
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def _scaled(a: np.ndarray, full: float) -> np.ndarray:
    """Integer pixels as float32 fractions of ``full``, divided in place: one float32 copy of the images, not two."""
    out = a.astype(np.float32)
    out /= np.float32(full)
    return out


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{what} has shape {y.shape}; store one integer class label per example (shape [N])")
    if len(y) != n:
        raise InputError(f"{what} has {len(y)} labels but x has {n} examples; save one label per example")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise InputError(f"{what} holds non-integer labels; store integer class labels 0, 1, 2, ...")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise InputError(f"{what} has dtype {y.dtype}; store integer class labels 0, 1, 2, ...")
    if n and y.min() < 0:
        raise InputError(f"{what} holds negative labels (min {int(y.min())}); use class labels 0, 1, 2, ...")
    if n and y.dtype.kind in "uf" and y.max() >= 2**63:  # beyond int64: float labels of 1e20 (or 2^63) had wrapped negative
        raise InputError(f"{what} holds labels up to {int(y.max())}, beyond any class; use class labels 0, 1, 2, ...")
    return y.astype(np.int64)


def _as_chw(img: np.ndarray, what: str) -> np.ndarray:
    """An image file's array (H,W / H,W,1-4) -> float32 C,H,W in [0, 1], alpha dropped."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{what} is not a 2-D grey or colour image (array shape {img.shape}); remove it or convert it")
    img = img[:, :, :1] if img.shape[2] == 2 else img[:, :, :3]
    return _unit_range(np.ascontiguousarray(img.transpose(2, 0, 1)), what, image_file=True)


def _to_channels(img: np.ndarray, c: int) -> np.ndarray:
    """Colour -> grey when one channel is wanted; grey is repeated later by :func:`_fit`."""
    if c == 1 and img.shape[0] == 3:
        return np.tensordot(_GREY, img, axes=1)[None]
    return img


def _stack_images(images: Iterable[np.ndarray], n: int, shape: tuple[int, int, int] | None, what: str) -> torch.Tensor:
    """Bring ``n`` image arrays of any size to one tensor ``[N, C, H, W]``; with ``shape`` each is resized as it comes,
    so only one is held at full size (a folder of phone photos would otherwise take 144 MB each)."""
    if shape is not None:
        _check_size(n, shape, what)
        return torch.cat([_fit(_to_channels(img, shape[0])[None], shape, what) for img in images])
    images = list(images)
    c = max(img.shape[0] for img in images)
    images = [_to_channels(img, c) for img in images]
    sizes = {img.shape[1:] for img in images}
    if len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise InputError(
            f"images in {what} have different sizes (e.g. {a[0]}x{a[1]} and {b[0]}x{b[1]}); "
            f"pass --input-shape C,H,W to resize them"
        )
    return torch.cat([_fit(img[None], (c, *img.shape[1:]), what) for img in images])


# --------------------------------------------------------------------------- sources


def _digits() -> tuple[np.ndarray, np.ndarray]:
    state = random.getstate()  # scikit-learn's first import draws from Python's generator: the caller's is kept
    try:
        from sklearn.datasets import load_digits
    finally:
        random.setstate(state)

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    return x, digits.target.astype(np.int64)


def _skimage_photos(shape: tuple[int, int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """Several fixed square crops of each photograph shipped with scikit-image."""
    import skimage.data

    _check_size(len(_SKIMAGE_FILES) * _CROPS_PER_IMAGE, shape, "data images")
    xs, ys = [], []
    for label, name in enumerate(_SKIMAGE_FILES):
        path = Path(skimage.data.data_dir) / name
        if not path.is_file():
            continue
        img = _to_channels(_image_file(path, None), shape[0])
        h, w = img.shape[1:]
        rng = np.random.default_rng(label)
        for k in range(_CROPS_PER_IMAGE):
            side = min(h, w) if k == 0 else int(min(h, w) * rng.uniform(0.35, 0.85))
            top = (h - side) // 2 if k == 0 else int(rng.integers(0, h - side + 1))
            left = (w - side) // 2 if k == 0 else int(rng.integers(0, w - side + 1))
            xs.append(_fit(img[None, :, top : top + side, left : left + side], shape, "images"))
            ys.append(label)
    if len(set(ys)) < 2:
        raise InputError(f"the scikit-image photographs are missing from {skimage.data.data_dir}; reinstall scikit-image")
    return torch.cat(xs), np.array(ys, dtype=np.int64)


def _listing(folder: Path, *, classes: bool = False) -> list[Path]:
    """The folder's entries, hidden ones left out, sorted. A symbolic link to nothing is an InputError where it
    would have been read: among a data folder's ``classes`` any but an image's (images there are not read: a class
    folder's link had shifted every later class's label down by one), within a class an image's."""
    try:
        # by name, as ImageFolder sorts them (Windows' paths compare without case: Bird and apple had swapped labels)
        entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"cannot list data folder {folder} ({exc.strerror or type(exc).__name__}); check its permissions") from None
    for p in entries:
        image = p.suffix.lower() in IMAGE_EXTENSIONS
        if image != classes and p.is_symlink() and not p.exists():
            what = ("class folder", "folder", "class's images") if classes else ("image", "file", "image")
            raise InputError(f"{what[0]} {p} is a symbolic link to no {what[1]}; remove it or point it at the {what[2]}")
    return entries


def _folders(folder: Path, seen: set[Path]) -> Iterator[tuple[Path, list[Path]]]:
    """Each folder under ``folder`` (itself included) with its entries, following links; a folder whose real path
    is in ``seen`` is skipped, and every one reached is added to it."""
    pending = [folder]
    while pending:
        current = pending.pop()
        real = current.resolve()
        if real in seen:
            continue
        seen.add(real)
        entries = _listing(current)
        yield current, entries
        pending += [p for p in entries if p.is_dir()]


def _images_under(folder: Path, seen: set[Path]) -> list[Path]:
    """The image files in ``folder`` and its subfolders at any depth, as torchvision's ImageFolder finds and orders
    them (folders by path, each one's files by name: a folder's own images before its subfolders'; nested images had
    been left out without a word); links are followed, and a folder reached twice through them (``seen``) is read
    once."""
    by_folder = {}
    for current, entries in _folders(folder, seen):
        by_folder[str(current)] = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return [file for name in sorted(by_folder) for file in by_folder[name]]


def linked_folders(spec: str | os.PathLike[str] | None) -> list[Path]:
    """The real folders outside a data folder ``spec`` that links in it lead to, which the loader reads too (an
    output must not land in one of them: a link to a class folder had taken an audit's PNGs into the data set)."""
    root = data_source(spec)
    if root is None or not root.is_dir():
        return []
    base = root.resolve()
    reached: set[Path] = set()
    try:
        for _ in _folders(root, reached):
            pass
    except InputError:  # a folder it cannot list: the loader says so
        pass
    return sorted(real for real in reached if real != base and base not in real.parents)


def _folder_files(root: Path) -> tuple[list[Path], np.ndarray]:
    """The image files of a folder of class subfolders and their labels (sorted subfolder names -> 0, 1, ..., as
    torchvision's ImageFolder numbers them)."""
    entries = _listing(root, classes=True)
    if not entries:
        raise InputError(f"data folder {root} is empty; put one subfolder of images per class in it")
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise InputError(f"data folder {root} has no class subfolders; put the images in one subfolder per class")
    files, labels, base = [], [], root.resolve()
    readers = {base: root}  # each real folder read, with the class folder that reached it
    owners: dict[tuple[int, int], tuple[Path, int]] = {}  # each file (device, inode) with the first class it is in
    for label, folder in enumerate(classes):
        if folder.resolve() in readers:  # a link to a folder read already: its images would carry two labels
            raise InputError(f"class folder {folder} leads to a folder read already (as another class, or the data "
                             "folder itself); give each class a folder of its own")  # fmt: skip
        seen = {base}  # a link back to the data folder is not followed
        found = _images_under(folder, seen)
        for real in sorted(seen & {file.parent.resolve() for file in found}):  # a folder of images linked from two
            # classes had been read as the first one's only; one without images (notes) may be shared
            reader = readers.setdefault(real, folder)
            if reader != folder:
                raise InputError(f"folder {real} is reached from class folders {reader} and {folder} (through a link), "
                                 "so its images would carry two labels; give each class a folder of its own")  # fmt: skip
        if not found:
            raise InputError(
                f"class folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add some or remove the folder"
            )
        for file in found:  # a file linked (or hard-linked) into two classes would carry two labels
            info = file.stat()
            if not info.st_ino:  # a file system without inode numbers (some FUSE mounts): no file is told apart
                continue
            first, owner = owners.setdefault((info.st_dev, info.st_ino), (file, label))
            if owner != label:
                raise InputError(f"image {file} is the same file as {first}, in another class (a link); give each "
                                 "image one class")  # fmt: skip
        files += found
        labels += [label] * len(found)
    return files, np.array(labels, dtype=np.int64)


#: Pillow modes read as they are (grey, grey + alpha, colour, colour + alpha, 16-bit grey); every other mode
#: (palette, CMYK, YCbCr, LAB, HSV, 1-bit) is converted to RGB by Pillow, which also undoes the inverted CMYK
#: that Adobe's JPEGs store (read raw, those came out in negative colours).
_PIL_MODES_KEPT = frozenset({"L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"})


def _image_file(file: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image file as float32 ``C, H, W`` in [0, 1]: its first frame (a GIF or an animated PNG), alpha dropped.
    With ``size`` (H, W) a large image is scaled down while decoding (JPEG) or by whole factors (box filter) to no
    less than twice ``size``, so the antialiased resize that follows sees the same content at a fraction of the
    memory (a 12000x12000 PNG took 1.7 GB as floats)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: its error, past twice the limit, is kept
            with Image.open(file) as im:
                if size is not None and im.format == "JPEG":
                    im.draft(None, (2 * size[1], 2 * size[0]))
                im.seek(0)
                im.load()
                frame = im if im.mode in _PIL_MODES_KEPT else im.convert("RGB")
                if size is not None and frame.mode in ("L", "LA", "RGB", "RGBA"):
                    factor = min(frame.width // size[1], frame.height // size[0]) // 2
                    if factor >= 2:
                        frame = frame.reduce(factor)
                arr = np.array(frame)
    except Exception as exc:
        if type(exc).__name__ == "DecompressionBombError":  # Pillow's guard against huge images
            pixels = re.search(r"\((\d+) pixels\)", str(exc))
            count = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
            raise InputError(f"image {file} has {count}, more than is safe to decode; shrink it or remove it") from None
        if isinstance(exc, PermissionError):
            raise InputError(f"cannot read image {file} (permission denied); check its permissions") from None
        raise InputError(f"cannot read image {file} ({type(exc).__name__}); remove or re-save it") from None
    if arr.dtype == np.int32 and arr.size and 0 <= int(arr.min()) and int(arr.max()) <= 65535:
        arr = arr.astype(np.uint16)  # 16-bit grey that Pillow widened to its 32-bit integer mode
    return _as_chw(arr, f"image {file}")


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = "save it with np.savez(path, x=images, y=labels)"
    archive = read_npz(path, fix)
    missing = [k for k in ("x", "y") if k not in archive]
    if missing:
        raise InputError(f"{path} has no array {' or '.join(missing)} (it has: {', '.join(archive) or 'nothing'}); {fix}")
    x, y = archive["x"], archive["y"]
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and (x.shape[1] not in (1, 2, 3, 4) or x.shape[1] not in (1, 3) and x.shape[3] in (1, 3)) \
            and x.shape[3] in (1, 2, 3, 4):
        # N,H,W,C as numpy images usually are (grey, grey+alpha, RGB, RGBA; 4x4 RGB too): alpha dropped as in files
        x = x[..., :1] if x.shape[3] == 2 else x[..., :3]
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise InputError(f"x in {path} has shape {x.shape}; store images as N,H,W or N,C,H,W"
                         + (" (rows of features as N,1,F: one image of one row each)" if x.ndim == 2 else ""))
    if len(x) == 0:
        raise InputError(f"x in {path} holds no examples; save at least one image")
    y = _labels(np.asarray(y), len(x), f"y in {path}")
    # a compressed member holds far more than its bytes on disk: the images as stored (twice when reordered or
    # byte-swapped) and as float32 must fit
    refuse_beyond_memory(path, 2 * x.nbytes + 4 * x.size, "needs", "memory to read as float32 images")
    return _unit_range(np.ascontiguousarray(x), f"x in {path}"), y
