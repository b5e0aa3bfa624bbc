"""The audit's reconstruction grids: each attack's rebuilt images under the true ones, as PNG.

:func:`grid_png` draws one attack's reconstructions under the true images,
each pair captioned by :func:`grid_captions` (its place in the batch, its
label and the pair's PSNR, so that the picture reads beside the report's
table); the CLI writes one per image attack next to ``--output`` and the HTML
page embeds them. :func:`encode_png` marks each as fedguard's
(:func:`is_fedguard_png`), so that a later audit replaces its own grids and
nothing else.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from fedguard.types import AttackOutcome

__all__ = ["grid_png", "grid_captions", "encode_png", "is_fedguard_png"]

#: Pixels between a caption's lines.
CAPTION_SPACING = 1

#: The text chunk that marks a PNG as fedguard's, so that a later audit may replace it (and nothing else).
PNG_MARK = b"Software\x00fedguard"


def grid_path(output: str | os.PathLike, attack: str) -> Path:
    """Where ``attack``'s reconstruction grid goes: beside the report (beside a link's target, where the report
    lands), named after the report's whole file name, so that ``r.json`` and ``r.html`` keep their own grids."""
    report = Path(os.path.realpath(output))
    return report.with_name(f"{report.name}-{attack}.png")


def remove_stale_grids(output: str | os.PathLike, keep: Collection[str] = ()) -> None:
    """Delete the grids an earlier audit report at ``output`` left for attacks other than ``keep`` (fedguard's own
    only): the report they showed is replaced, by another audit or by an inspection (whose report had been left
    beside images of the private batch the audit before it had rebuilt)."""
    from fedguard.attacks.base import attacks

    for name in attacks().names():
        path = grid_path(output, name)
        try:
            if name not in keep and path.is_file() and is_fedguard_png(path):
                path.unlink()
        except OSError:  # a name too long for the file system, a folder that forbids it: the report stands, written
            pass


def is_fedguard_png(path: str | os.PathLike) -> bool:
    """True when ``path`` is a PNG :func:`encode_png` wrote."""
    from fedguard.io import read_head

    head = read_head(path, 64)
    return head.startswith(b"\x89PNG\r\n\x1a\n") and PNG_MARK in head


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an ``H,W,3`` uint8 array as a PNG (8-bit RGB, no filter), marked as fedguard's (:data:`PNG_MARK`)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", PNG_MARK) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def grid_captions(outcome: AttackOutcome, true_labels: Sequence[int]) -> list[str]:
    """One caption per example of the batch for :func:`grid_png`: ``#3: 7`` (its place in the batch and its label;
    ``7->2`` where the attack gave its reconstruction another label) over the pair's PSNR, or ``not rebuilt``."""
    scored = {s.index: s for s in outcome.samples}
    captions = []
    for index, label in enumerate(int(y) for y in true_labels):
        s = scored.get(index)
        given = f"->{s.rebuilt_label}" if s is not None and s.rebuilt_label not in (None, label) else ""
        captions.append(f"#{index}: {label}{given}\n" + (f"{s.psnr:.1f} dB" if s is not None else "not rebuilt"))
    return captions


def attack_grids(report) -> dict[str, bytes]:
    """Each attack's grid (:func:`grid_png`, captioned by :func:`grid_captions`) by attack name, for an
    :class:`~fedguard.types.AuditReport` that kept the true batch; empty where it did not."""
    if report.true_images is None:
        return {}
    return {o.name: grid_png(report.true_images, o.images, captions=grid_captions(o, report.true_labels))
            for o in report.attacks if o.images is not None}  # fmt: skip


def grid_png(true_images, rebuilt, *, captions: Sequence[str] | None = None, columns: int = 16, min_side: int = 64,
             gap: int = 2) -> bytes:
    """True images (upper row of each pair) over their matched reconstructions (lower row).

    ``true_images`` and ``rebuilt`` are ``[N, C, H, W]`` in [0, 1] in the same
    order (as :func:`fedguard.metrics.score` returns them; an example the attack
    did not rebuild is black). Small images are enlarged (nearest neighbour) to
    at least ``min_side`` pixels. Beyond ``columns`` examples the pairs of rows
    stack, a quarter of an image apart so that each pair reads as one.
    ``captions`` (one per example, lines split by ``\\n``; :func:`grid_captions`)
    are written under their pairs in Pillow's default font, the images enlarged
    further where a caption is wider.
    """
    t = np.asarray(true_images.detach().cpu().float().clamp(0, 1).numpy() if hasattr(true_images, "detach") else true_images)
    r = np.asarray(rebuilt.detach().cpu().float().clamp(0, 1).numpy() if hasattr(rebuilt, "detach") else rebuilt)
    n, c, h, w = t.shape
    font, line = None, 0
    if captions:
        from PIL import ImageFont

        font = ImageFont.load_default()  # FreeType's, or the bitmap font where Pillow has no FreeType
        written = [text for caption in captions[:n] for text in caption.split("\n")]
        min_side = max(min_side, max(math.ceil(font.getlength(text)) for text in written))
        line = font.getbbox("Ag#")[3] + CAPTION_SPACING
    scale = max(1, -(-min_side // max(h, w)))
    if c == 1:
        t, r = np.repeat(t, 3, axis=1), np.repeat(r, 3, axis=1)
    elif c != 3:
        t, r = np.repeat(t[:, :1], 3, axis=1), np.repeat(r[:, :1], 3, axis=1)
    H, W = h * scale, w * scale
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    apart = gap + H // 4  # between pairs of rows; the two rows of a pair are ``gap`` apart
    if font is not None:
        apart = max(apart, 2 * gap + line * max(caption.count("\n") + 1 for caption in captions[:n]))
    canvas = np.full((rows * (2 * H + gap) + (rows + 1) * apart, cols * (W + gap) + gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        row, col = divmod(i, cols)
        top = apart + row * (2 * H + gap + apart)
        left = gap + col * (W + gap)
        for k, img in enumerate((t[i], r[i])):
            tile = (np.transpose(img, (1, 2, 0)) * 255 + 0.5).astype(np.uint8)
            tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            y0 = top + k * (H + gap)
            canvas[y0 : y0 + H, left : left + W] = tile
    if font is not None:
        from PIL import Image, ImageDraw

        picture = Image.fromarray(canvas)
        draw = ImageDraw.Draw(picture)
        for i, caption in enumerate(captions[:n]):
            row, col = divmod(i, cols)
            below = apart + row * (2 * H + gap + apart) + 2 * H + gap + gap
            draw.multiline_text((gap + col * (W + gap), below), caption, fill=(0, 0, 0), font=font, spacing=CAPTION_SPACING)
        canvas = np.asarray(picture)
    return encode_png(canvas)
