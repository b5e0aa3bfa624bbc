"""A plain DLG loop, as in Zhu et al.'s published code: the time base of the DLG fidelity target.

One random start, ``torch.optim.LBFGS`` with its defaults (lr 1, no line
search, 20 inner iterations per step, history 100), dummy data and dummy soft
labels from N(0, 1), squared L2 distance between gradients summed over the
parameters, 300 steps. Nothing from fedguard's attack code is used.

Usage: ``python benchmarks/reference_dlg.py [--seed 0] [--steps 300] [--threads 2]``
(the model, the image and the update are built as in attack_fidelity.py, and the process is set up as there:
the same OpenMP waiting, the same thread count).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedguard.__main__ import yielding_openmp  # noqa: E402

yielding_openmp()  # before torch loads, as attack_fidelity.py does (a no-op when it imports this module)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _timing import now  # noqa: E402


def plain_dlg(net: torch.nn.Module, target_grads, shape, num_classes: int, steps: int = 300, seed: int = 0):
    """Run DLG's loop; returns (dummy_data, dummy_label_logits, seconds, evaluations)."""
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    dummy_data = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    dummy_label = torch.randn(shape[0], num_classes, generator=gen).to(device).requires_grad_(True)
    optimizer = torch.optim.LBFGS([dummy_data, dummy_label])
    params = [p for p in net.parameters()]
    evaluations = 0
    start = now(device)
    for _ in range(steps):

        def closure():
            nonlocal evaluations
            evaluations += 1
            optimizer.zero_grad()
            pred = net(dummy_data)
            loss = torch.sum(-F.softmax(dummy_label, dim=-1) * F.log_softmax(pred, dim=-1), dim=-1).mean()
            grads = torch.autograd.grad(loss, params, create_graph=True)
            diff = sum(((gx - gy) ** 2).sum() for gx, gy in zip(grads, target_grads))
            diff.backward()
            return diff

        optimizer.step(closure)
    return dummy_data.detach(), dummy_label.detach(), now(device) - start, evaluations


def main() -> None:
    from _args import new_parser, non_negative_int, positive_int
    from attack_fidelity import dlg_case

    parser = new_parser(__doc__, "Quick run: --steps 5 (seconds).")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the image, the model's init and the start")
    parser.add_argument("--steps", type=positive_int, default=300, help="L-BFGS steps")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch's CPU threads, as attack_fidelity.py's --threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    net, x, y, grads = dlg_case(args.seed)
    data, label, seconds, evals = plain_dlg(net, grads, x.shape, 10, args.steps, args.seed)
    mse = float(((data.clamp(0, 1) - x) ** 2).mean())
    psnr = 10 * torch.log10(torch.tensor(1.0 / mse)).item()
    print(f"plain DLG seed {args.seed}: {psnr:.1f} dB in {seconds:.1f} s ({evals} evaluations), label {int(label.argmax())} (true {int(y)})")


if __name__ == "__main__":
    main()
