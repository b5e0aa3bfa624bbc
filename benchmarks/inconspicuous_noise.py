"""Inconspicuous MKOR against its crafter's noise: what ``inspect`` says and what the server still reads.

MKOR's inconspicuous form (Wang et al., WACV 2024) puts i.i.d. noise on the
parameters it changes. More noise hides the construction better, and it also
blurs the paths that carry the batch to the update. For each architecture and
noise level this prints:

* ``inspect``'s verdicts over 3 crafting seeds, from the weights alone and
  with the client's data (``--arch ... --data digits``);
* the MKOR emulator's class-image scores (avg SSIM, avg PSNR; every example
  against its class's image, as in docs/benchmarks.md's MKOR table) on
  batches of 100 digits, with the class rows found from the model's paths
  (fedguard's emulator) and with the rows the crafter planted (a server that
  knows its own indices).

The baselines come first: the emulator on the honest model (a model with one
Linear layer has class rows already: its head), the public data's mean image
(what the server knows without the update) and the public class means (a
server that also knows the batch's labels).

Run from the repository root (about 5 minutes on 2 cores):

    python benchmarks/inconspicuous_noise.py [--noise 0.01,0.1,0.2,0.3] [--batches 3]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from fedguard.architectures import build_model  # noqa: E402
from fedguard.layers import linear_layers  # noqa: E402
from fedguard.attacks.base import Budget  # noqa: E402
from fedguard.attacks.craft import craft  # noqa: E402
from fedguard.attacks.mkor import MKOR, class_rows  # noqa: E402
from fedguard.data import load_data  # noqa: E402
from fedguard.inspect import inspect_model  # noqa: E402
from fedguard.update import compute_update  # noqa: E402

from _args import listed, new_parser, non_negative_float, one_line_errors, one_of, positive_int  # noqa: E402
from _attacks import class_scores, mkor_baselines, mkor_batch, server_view  # noqa: E402

ARCHS = {"lenet": (3, 32, 32), "convnet": (3, 32, 32), "lenet5": (1, 28, 28), "mlp": (1, 28, 28)}
CPU = torch.device("cpu")


def leakage(net, shape, data, batches: int, rows=None) -> str:
    """Avg SSIM / PSNR of the MKOR emulator over ``batches`` batches, or why it does not apply."""
    got = []
    for b in range(batches):
        (bx, by), public = mkor_batch(data, b)
        view = server_view(net, compute_update(net, bx, by), shape, seed=b, aux=public)
        attack = MKOR(rows)
        why = attack.applies(view)
        if why:
            return f"n/a ({why})"
        rec = attack.run(view, Budget(MKOR.default_iterations))
        got.append(class_scores(rec.images, rec.labels, bx, by))
    return _avg(np.mean(got, axis=0))


def _avg(scores) -> str:
    """Avg SSIM and avg PSNR of a (max SSIM, avg SSIM, max PSNR, avg PSNR) row."""
    return f"{scores[1]:.2f}, {scores[3]:.1f} dB"


def planted_rows(arch: str, shape, seed: int, net) -> list[torch.Tensor]:
    """The rows the crafter planted: the same seed with negligible noise draws the same indices."""
    clear = craft("mkor_inconspicuous", _honest(arch, shape, seed), input_shape=shape, num_classes=10, seed=seed,
                  noise=1e-6)  # fmt: skip
    rows = class_rows([h.module for h in linear_layers(clear, shape, CPU)], 10)
    kept = [h.module.weight for h in linear_layers(net, shape, CPU)][0]
    honest = [h.module.weight for h in linear_layers(clear, shape, CPU)][0]
    # each class keeps one honest row, untouched by the noise
    assert all(any(torch.equal(kept[i], honest[i]) for i in r) for r in rows if len(r)), "the crafter drew other rows"
    return rows


def verdicts(net, arch: str, shape) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        alone = inspect_model(path).verdict.value
        with_data = inspect_model(path, arch=arch, input_shape=shape, data="digits").verdict.value
    return alone, with_data


def _honest(arch: str, shape, seed: int):
    torch.manual_seed(seed)
    return build_model(arch, input_shape=shape)


def main() -> None:
    parser = new_parser(__doc__, "Quick run: --archs mlp --noise 0.1 --batches 1 (under a minute).")
    parser.add_argument("--noise", type=listed(non_negative_float), default="0.01,0.1,0.2,0.3",
                        help="comma-separated noise levels of the crafter (its 'noise' option)")
    parser.add_argument("--batches", type=positive_int, default=3, help="batches of 100 digits the emulator is scored on")
    parser.add_argument("--archs", type=listed(one_of(*ARCHS)), default=",".join(ARCHS),
                        help=f"comma-separated architectures, out of {', '.join(ARCHS)}")
    args = parser.parse_args()
    with one_line_errors(parser):
        _table(args.archs, args.noise, args.batches)


def _table(archs: list[str], noises: list[float], batches: int) -> None:
    """Print the baselines of each architecture, then one line per noise level."""
    for arch in archs:
        shape = ARCHS[arch]
        data = load_data("digits", input_shape=shape)
        mean, means = mkor_baselines(data, batches)
        print(f"## {arch} {shape}: public mean image {_avg(mean)}; public class means {_avg(means)}; "
              f"honest model {leakage(_honest(arch, shape, 0), shape, data, batches)}", flush=True)  # fmt: skip
        for noise in noises:
            nets = [craft("mkor_inconspicuous", _honest(arch, shape, seed), input_shape=shape, num_classes=10,
                          seed=seed, noise=noise) for seed in range(3)]  # fmt: skip
            found = [verdicts(net, arch, shape) for net in nets]
            net = nets[0]
            rows = planted_rows(arch, shape, 0, net)
            print(f"noise {noise}: inspect {'/'.join(a for a, _ in found)}, with data {'/'.join(d for _, d in found)}; "
                  f"emulator {leakage(net, shape, data, batches)}, "
                  f"planted rows {leakage(net, shape, data, batches, rows)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
