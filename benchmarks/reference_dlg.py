"""A plain DLG loop, as in Zhu et al.'s published code: the time base of the DLG fidelity target.

One random start, ``torch.optim.LBFGS`` with its defaults (lr 1, no line
search, 20 inner iterations per step, history 100), dummy data and dummy soft
labels from N(0, 1), squared L2 distance between gradients summed over the
parameters, 300 steps. Nothing from fedguard's attack code is used.

Usage: ``python benchmarks/reference_dlg.py [--seed 0] [--steps 300]``
(the model, the image and the update are built as in attack_fidelity.py).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def plain_dlg(net: torch.nn.Module, target_grads, shape, num_classes: int, steps: int = 300, seed: int = 0):
    """Run DLG's loop; returns (dummy_data, dummy_label_logits, seconds, evaluations)."""
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    dummy_data = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    dummy_label = torch.randn(shape[0], num_classes, generator=gen).to(device).requires_grad_(True)
    optimizer = torch.optim.LBFGS([dummy_data, dummy_label])
    params = [p for p in net.parameters()]
    evaluations = 0
    start = time.perf_counter()
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
    if device.type == "cuda":
        torch.cuda.synchronize()
    return dummy_data.detach(), dummy_label.detach(), time.perf_counter() - start, evaluations


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attack_fidelity import dlg_case  # noqa: E402

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    net, x, y, grads = dlg_case(args.seed)
    data, label, seconds, evals = plain_dlg(net, grads, x.shape, 10, args.steps, args.seed)
    mse = float(((data.clamp(0, 1) - x) ** 2).mean())
    psnr = 10 * torch.log10(torch.tensor(1.0 / mse)).item()
    print(f"plain DLG seed {args.seed}: {psnr:.1f} dB in {seconds:.1f} s ({evals} evaluations), label {int(label.argmax())} (true {int(y)})")


if __name__ == "__main__":
    main()
