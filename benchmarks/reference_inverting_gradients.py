"""A plain Inverting Gradients loop in the style of Geiping et al.'s ``inversefed`` code.

The reference that ``attack_fidelity.py`` compares fedguard's attack with:
restarts one after the other; per iteration a forward pass, the parameter
gradient with ``create_graph=True``, the cosine cost accumulated layer by
layer as in ``inversefed.reconstruction_costs`` (indices ``def``, equal
weights), the TV prior on the standardised image, ``backward()``, the sign of
the image gradient, one Adam step (lr 0.1), ``MultiStepLR`` at 3/8, 5/8, 7/8
(gamma 0.1), the box clamp; the restart with the smallest cosine cost wins.
The model runs in training mode: with ``attack_fidelity.py``'s default ``--ig-norm running`` its BatchNorm layers
have already been replaced by fixed affine layers (their running statistics); with ``--ig-norm batch`` they normalise
by the batch's statistics, as the client trained.
Same start as fedguard (``z ~ N(0, 1)`` from ``torch.Generator().manual_seed(seed * 1000 + 23)``),
on the model's device.
Nothing from fedguard's attack code is used. A module, not a script:
``python benchmarks/attack_fidelity.py --only ig`` runs it beside fedguard's.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from _timing import now

MEAN, STD = 0.5, 0.25


def total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = torch.mean(torch.abs(x[:, :, :, :-1] - x[:, :, :, 1:]))
    dy = torch.mean(torch.abs(x[:, :, :-1, :] - x[:, :, 1:, :]))
    return dx + dy


def reconstruction_costs(trial_gradient, input_gradient):
    costs = 0
    pnorm = [0, 0]
    for i in range(len(input_gradient)):
        costs -= (trial_gradient[i] * input_gradient[i]).sum()
        pnorm[0] += trial_gradient[i].pow(2).sum()
        pnorm[1] += input_gradient[i].pow(2).sum()
    return 1 + costs / pnorm[0].sqrt() / pnorm[1].sqrt()


def reference_inverting_gradients(model, input_gradient, labels, batch, iterations, restarts=1, seed=0, tv=0.01, lr=0.1, shape=(3, 32, 32)):
    """Returns ``{"images": [B, C, H, W] in [0, 1], "seconds": float, "cost": float}``."""
    model = copy.deepcopy(model)
    model.train()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed * 1000 + 23)
    starts = torch.randn(restarts, batch, *shape, generator=gen).to(params[0].device)
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    milestones = [int(iterations // 2.667), int(iterations // 1.6), int(iterations // 1.142)]
    best, best_cost = None, float("inf")
    start = now(params[0].device)
    for r in range(restarts):
        x_trial = starts[r].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x_trial], lr=lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        for _ in range(iterations):

            def closure():
                optimizer.zero_grad()
                model.zero_grad()
                loss = F.cross_entropy(model(MEAN + STD * x_trial), labels)
                trial_gradient = torch.autograd.grad(loss, params, create_graph=True)
                rec_loss = reconstruction_costs(trial_gradient, input_gradient)
                if tv > 0:
                    rec_loss = rec_loss + tv * total_variation(x_trial)
                rec_loss.backward()
                x_trial.grad.sign_()
                return rec_loss

            optimizer.step(closure)
            scheduler.step()
            with torch.no_grad():
                x_trial.data = torch.max(torch.min(x_trial, torch.tensor(hi)), torch.tensor(lo))
        loss = F.cross_entropy(model(MEAN + STD * x_trial.detach()), labels)
        cost = float(reconstruction_costs(torch.autograd.grad(loss, params), input_gradient))
        if cost < best_cost:
            best, best_cost = x_trial.detach().clone(), cost
    seconds = now(params[0].device) - start
    return {"images": (MEAN + STD * best).clamp(0, 1).cpu(), "seconds": seconds, "cost": best_cost}
