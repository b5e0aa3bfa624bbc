"""Builders shared by the test modules: small models and the server's view of an update."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedguard.architectures import build_model
from fedguard.metrics import score
from fedguard.threat import ServerView, ThreatModel
from fedguard.update import compute_update

#: The shape of scikit-learn's digits as fedguard loads them.
DIGITS_SHAPE = (1, 8, 8)


def lenet8(seed: int = 0) -> nn.Module:
    """The DLG LeNet (four sigmoid 5x5 convolutions) for 8x8 digits, seeded."""
    torch.manual_seed(seed)
    return build_model("lenet", input_shape=DIGITS_SHAPE)


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A 16 -> 8 -> 3 MLP's state_dict, seeded."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def one_per_class(y: torch.Tensor, k: int = 0) -> np.ndarray:
    """Index of the k-th example of every class 0..9."""
    return np.array([int(np.nonzero(y.numpy() == c)[0][k]) for c in range(10)])


def server_view(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    index,
    *,
    protocol: str = "fedsgd",
    local_steps: int = 1,
    local_lr: float | None = None,
    local_batch_size: int | None = None,
    known_labels: bool = False,
    auxiliary: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[ServerView, torch.Tensor, torch.Tensor]:
    """The update of ``model`` on ``data[index]`` as the server sees it (on ``device``), built as the audit builds
    it, and the true batch; the server's public data is 512 other examples."""
    x, y = data
    index = np.asarray(index)
    bx, by = x[index], y[index]
    model = model.to(device)
    upd = compute_update(
        model, bx.to(device), by.to(device), protocol=protocol, local_steps=local_steps, local_lr=local_lr, local_batch_size=local_batch_size
    )
    rest = np.random.default_rng(seed + 1).permutation(np.setdiff1d(np.arange(len(y)), index))[:512]
    threat = ThreatModel(labels="known" if known_labels else "infer")
    view = ServerView.of_update(model, upd, threat, num_classes=10, input_shape=bx.shape[1:], device=torch.device(device),
                                seed=seed, labels=by, auxiliary=(x[rest], y[rest]) if auxiliary else None)
    return view, bx, by


def measure(rec, bx, by, kind="images"):
    """``rec`` scored against the true batch, 10 classes."""
    return score(rec, bx, by, 10, title="t", reference="r", kind=kind)


def skipped_when_asked(report) -> dict[str, str]:
    """An audit report's skipped attacks but the defaults it was not asked to run (listed as not requested, or with
    the reason they would not apply)."""
    asked = report.config.get("attacks_requested")
    return {name: why for name, why in report.skipped.items() if asked is None or name in asked}
