"""What ``fc_inversion`` rebuilds from an MLP's update, clean and after what a client may do to it before upload.

The built-in MLP (seeded init), digits at 28x28, FedSGD, batches of 4, 16 and
64 over 3 seeds; the first Linear layer's update as computed, with Gaussian
noise of 0.1 % and 1 % of each tensor's norm, and quantised to 8 bits (per
tensor, symmetric: ``round(g / s) * s`` with ``s = max |g| / 127``, as QSGD-style
compression uploads it). Rebuilt images are matched one to one to the true
ones (``fedguard.metrics.match``); prints the examples rebuilt at >= 30 dB and
>= 20 dB of all the batches' examples, per condition and batch size. The
figures behind ``NEAR_RANGE`` and the grouping of ``invert_rows``.

Usage: ``python benchmarks/fc_inversion_fidelity.py [--seeds 3] [--batches 4,16,64]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.architectures import build_model  # noqa: E402
from fedguard.attacks.fc_inversion import invert_rows  # noqa: E402
from fedguard.data import load_data  # noqa: E402
from fedguard.metrics import match, psnr  # noqa: E402
from fedguard.update import compute_update  # noqa: E402

from _args import listed, new_parser, one_line_errors, positive_int  # noqa: E402

SHAPE = (1, 28, 28)


def _noisy(fraction: float):
    def apply(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(t.shape, generator=gen)
        return t + noise * (fraction * torch.linalg.vector_norm(t) / torch.linalg.vector_norm(noise))
    return apply


def _quantised(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    step = t.abs().max() / 127
    return t if step == 0 else (t / step).round().clamp(-127, 127) * step


CONDITIONS = {"as computed": lambda t, gen: t, "noise 0.1 %": _noisy(0.001), "noise 1 %": _noisy(0.01),
              "8-bit quantised": _quantised}  # fmt: skip


def main() -> None:
    parser = new_parser(__doc__, "Quick run: --seeds 1 --batches 4 (seconds).")
    parser.add_argument("--seeds", type=positive_int, default=3, help="model inits and batches per batch size")
    parser.add_argument("--batches", type=listed(positive_int), default="4,16,64",
                        help="comma-separated batch sizes (at most the 1,797 digits)")
    args = parser.parse_args()
    x, y = load_data("digits", input_shape=SHAPE)[:2]
    if max(args.batches) > len(y):
        parser.error(f"--batches {max(args.batches)} is larger than the {len(y)} digits")
    with one_line_errors(parser):
        _table(x, y, args.batches, args.seeds)


def _table(x: torch.Tensor, y: torch.Tensor, batches: list[int], seeds: int) -> None:
    """Print the examples rebuilt at >= 30 and >= 20 dB, per condition (rows) and batch size (columns)."""
    print(f"{'condition':<18}" + "".join(f"{f'batch {b}: >=30 / >=20 dB':>30}" for b in batches))
    for label, change in CONDITIONS.items():
        cells = []
        for batch in batches:
            high = fair = total = 0
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = build_model("mlp", num_classes=10, input_shape=SHAPE)
                index = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:batch]
                update = compute_update(model, x[index], y[index])
                weight, bias = list(update.tensors.values())[:2]
                gen = torch.Generator().manual_seed(1000 + seed)
                rows, _ = invert_rows(change(weight, gen), change(bias, gen), batch)
                rebuilt = rows.float().reshape(-1, *SHAPE)
                scores = [psnr(x[index][t].numpy(), rebuilt[r].numpy()) for t, r in match(x[index], rebuilt)]
                high += sum(s >= 30 for s in scores)
                fair += sum(s >= 20 for s in scores)
                total += batch
            cells.append(f"{f'{high} / {fair} of {total}':>30}")
        print(f"{label:<18}" + "".join(cells))


if __name__ == "__main__":
    main()
