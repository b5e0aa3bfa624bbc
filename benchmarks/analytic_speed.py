"""Analytic attacks cost about one backward pass: time as a ratio to one forward+backward on the batch.

For ``fc_inversion`` (the MLP as received) and the ``imprint`` and
``class_fishing`` emulators (LeNet with the crafted block, the MLP with the
fishing head; the attack step only, not the client-side crafting), prints the attack's median time over repeats, the median time of
one forward+backward of the same model on the same batch, and their ratio
(target <= 3x). The server has the rest of digits as public data, as in the
audit (``fc_inversion`` reads its bins on them).

Torch's OpenMP threads wait as in the ``fedguard`` command
(:func:`fedguard.__main__.yielding_openmp`): on a busy machine libgomp's
default had made every small operation wait about 20 ms (ratios of 570x).

Usage: ``python benchmarks/analytic_speed.py [--repeats 20] [--threads 2]``
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.__main__ import yielding_openmp  # noqa: E402

yielding_openmp()  # before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fedguard.architectures import build_model, resolve_input_shape  # noqa: E402
from fedguard.attacks.base import Budget  # noqa: E402
from fedguard.attacks.class_fishing import ClassFishing  # noqa: E402
from fedguard.attacks.fc_inversion import FCInversion  # noqa: E402
from fedguard.attacks.imprint import ImprintEmulator  # noqa: E402
from fedguard.audit import _emulate  # noqa: E402  (the audit's client-side step for emulators)
from fedguard.data import load_data  # noqa: E402
from fedguard.threat import ServerView  # noqa: E402
from fedguard.update import compute_update  # noqa: E402

from _args import new_parser, one_line_errors, positive_int  # noqa: E402
from _attacks import server_view  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _view(arch: str, batch: int) -> tuple[ServerView, object, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    shape = resolve_input_shape(arch, None)
    model = build_model(arch, input_shape=shape)
    x, y = load_data("digits", input_shape=shape)
    bx, by = x[:batch], y[:batch]
    upd = compute_update(model, bx, by, protocol="fedsgd")
    view = server_view(model, upd, shape, aux=(x[batch:], y[batch:]),  # the public examples the audit hands the server
                       label_counts=torch.bincount(by, minlength=10))  # as the label attack finds them (FedSGD: exact)
    return view, upd, bx, by


def main() -> None:
    parser = new_parser(__doc__, "Quick run: --repeats 3 (seconds).")
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed runs of each attack and pass (medians printed)")
    parser.add_argument("--threads", type=positive_int, help="torch's CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with one_line_errors(parser):
        _measure(args.repeats)


def _measure(repeats: int) -> None:
    """Print one line per attack: its median time, a forward+backward's, and their ratio."""
    for attack, arch, batch in ((FCInversion(), "mlp", 1), (FCInversion(), "mlp", 16), (ImprintEmulator(), "lenet", 64),
                                (ClassFishing(), "mlp", 16)):
        view, upd, bx, by = _view(arch, batch)
        if attack.emulates is not None:
            view = _emulate(attack.emulates, attack.crafter_options(view), view, upd, bx, by, None, 0)
        t_attack = _median_seconds(lambda: attack.run(view, Budget(1)), repeats)

        def forward_backward():
            view.model.zero_grad()
            F.cross_entropy(view.model(bx), by).backward()

        t_fb = _median_seconds(forward_backward, repeats)
        print(f"{attack.name:<13} {arch:<6} batch {batch:<3} attack {1000 * t_attack:7.2f} ms   "
              f"forward+backward {1000 * t_fb:7.2f} ms   ratio {t_attack / t_fb:5.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
