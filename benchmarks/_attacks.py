"""What the attack benchmarks share: the server's view of an update, and MKOR's batches, baselines and scores."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.metrics import class_image_scores  # noqa: E402
from fedguard.threat import ServerView, ThreatModel  # noqa: E402


def server_view(net, upd, shape, num_classes=10, seed=0, aux=None, device=torch.device("cpu"), **known) -> ServerView:
    """What an honest server sees of ``upd`` (its schedule included), with ``aux`` as public data; ``known`` adds
    what the server is told (``label_counts=...``)."""
    view = ServerView.of_update(net, upd, ThreatModel(), num_classes=num_classes, input_shape=shape, device=device,
                                seed=seed, auxiliary=aux)
    return dataclasses.replace(view, **known)


def class_scores(images: torch.Tensor, labels: torch.Tensor, bx: torch.Tensor, by: torch.Tensor) -> tuple[float, float, float, float]:
    """Max and mean SSIM, max and mean PSNR of MKOR's tables (every example against its class's image)."""
    ss, ps = class_image_scores(images, labels, bx, by)
    return max(ss), float(np.mean(ss)), max(ps), float(np.mean(ps))


def mkor_batch(data: tuple[torch.Tensor, torch.Tensor], b: int):
    """Batch ``b`` of the MKOR runs: ``(x, y)`` of 100 random examples, and the next 512 as the server's public data."""
    x, y = data
    perm = np.random.default_rng(b).permutation(len(y))
    return (x[perm[:100]], y[perm[:100]]), (x[perm[100:612]], y[perm[100:612]])


def mkor_baselines(data: tuple[torch.Tensor, torch.Tensor], batches: int) -> tuple[np.ndarray, np.ndarray]:
    """The MKOR scores of the public data's mean image (the server without the update) and of its class means
    (a server that also knows the batch's labels), as if they were reconstructions, averaged over ``batches``."""
    mean, means = [], []
    for b in range(batches):
        (bx, by), (px, py) = mkor_batch(data, b)
        classes = torch.unique(by)
        mean.append(class_scores(px.mean(0, keepdim=True).expand(len(classes), *px.shape[1:]), classes, bx, by))
        means.append(class_scores(torch.stack([px[py == c].mean(0) for c in classes]), classes, bx, by))
    return np.mean(mean, axis=0), np.mean(means, axis=0)
