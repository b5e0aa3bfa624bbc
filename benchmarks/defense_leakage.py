"""What each client-side defense leaves to the server's attacks (``fedguard audit --defense``).

For the MLP (whose first layer the analytic attack inverts) and the DLG LeNet
on digits at 8x8, one FedSGD batch of 8 (seed 0), it audits the update with
no defense, DP-SGD at several noise multipliers (clip 1), pruning at several
fractions and Gaussian noise at several standard deviations, and prints per
setting: the leakage level, the PSNR and SSIM (max over the batch) of the
image attack with the highest level (then PSNR), the label accuracy of the
label-count attack and, for DP-SGD, the round's epsilon at delta 1e-5
(Opacus RDP accountant, sample rate 1).

Usage: ``python benchmarks/defense_leakage.py [--time-budget S]``; the
attacks stop at 300 iterations or the time budget (default 10 s) each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.audit import audit  # noqa: E402
from fedguard.defenses import DPSGD, GaussianNoise, Pruning  # noqa: E402

from _args import new_parser, one_line_errors, positive_float  # noqa: E402

SETTINGS = (
    None,
    DPSGD(0.1), DPSGD(0.5), DPSGD(1.0),
    Pruning(0.5), Pruning(0.9), Pruning(0.99),
    GaussianNoise(1e-3), GaussianNoise(1e-2), GaussianNoise(1e-1),
)  # fmt: skip


def _row(arch: str, defense, budget: float) -> str:
    start = time.perf_counter()
    report = audit(None, arch=arch, input_shape=(1, 8, 8), data="digits", batch_size=8, defense=defense,
                   max_iterations=300, time_budget=budget, seed=0)  # fmt: skip
    images = [o for o in report.attacks if o.psnr_max is not None]
    best = max(images, key=lambda o: (int(o.level), o.psnr_max), default=None)  # the attack behind the level
    labels = next((o.label_accuracy for o in report.attacks if o.name == "label_counts"), None)
    name = "none" if defense is None else f"{defense.name} {next(iter(defense.settings().values())):g}"
    epsilon = f"{report.update['epsilon']:.3g}" if report.update.get("epsilon") is not None else "-"
    shown = f"{best.name} {best.psnr_max:.1f} dB / {best.ssim_max:.2f}" if best else "nothing rebuilt"
    label = f"{labels:.2f}" if labels is not None else "-"
    return (f"{arch:<6} {name:<13} {str(report.leakage.level):<7} {shown:<36} labels {label:<5} "
            f"eps {epsilon:<7} {time.perf_counter() - start:5.1f} s")


def main() -> None:
    parser = new_parser(__doc__, "Quick run: --time-budget 1 (about a minute; fewer iterations, so other figures).")
    parser.add_argument("--time-budget", type=positive_float, default=10.0,
                        help="seconds each attack may run (it stops at 300 iterations or this)")
    args = parser.parse_args()
    print("arch   defense       level   best attack: PSNR max / SSIM max     label accuracy, epsilon, time")
    with one_line_errors(parser):
        for arch in ("mlp", "lenet"):
            for defense in SETTINGS:
                print(_row(arch, defense, args.time_budget), flush=True)


if __name__ == "__main__":
    main()
