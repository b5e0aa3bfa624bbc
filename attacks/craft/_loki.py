"""LOKI: a scaled-identity convolution per client and an imprint layer in front (Zhao et al., IEEE S&P 2024)."""

from __future__ import annotations

import copy
from statistics import NormalDist

import torch
from torch import nn

from fedguard.attacks.craft._base import CRAFTERS, FrontEndModel, Shape, check_added, dry_check
from fedguard.errors import InputError


def _loki_bins(num_bins: int, mu: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LOKI's ``get_bins``: K+1 normal quantiles at equal mass 1/(K+2); the first K and their widths."""
    nd = NormalDist(mu, sigma)
    edges = torch.tensor([nd.inv_cdf((p + 1) / (num_bins + 2)) for p in range(num_bins + 1)], dtype=torch.float64)
    return edges[:-1].float(), (edges[1:] - edges[:-1]).float()


@CRAFTERS.register("loki")
def loki(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    num_clients: int = 10,
    client: int = 0,
    batch_size: int = 64,
    num_bins: int | None = None,
    conv_scale: float = 500.0,
    fc_scale: float = 1000.0,
    kernel_size: int = 3,
    mu: float | None = None,
    sigma: float | None = None,
) -> FrontEndModel:
    """LOKI: a customised scaled-identity convolution and an imprint layer in front.

    Returns a :class:`FrontEndModel` (image input) whose ``imprint`` is
    ``Sequential(Conv2d(C, M*C, k, padding same), ReLU, Flatten,
    Linear(M*C*H*W, K), Hardtanh(0, 1), Linear(K, C*H*W), ReLU)``; keys
    ``imprint.0`` (conv), ``imprint.3`` (FC1), ``imprint.5`` (FC2), then ``model.*``.

    * ``imprint.0``: for client slot ``client`` of ``M = num_clients``, kernel
      ``client*C + j`` is a dirac at the centre tap of input channel ``j``
      scaled by ``conv_scale`` (500); every other kernel and all biases are 0.
      Each client gets a different slot, so under secure aggregation its
      contribution lands in its own columns of FC1;
    * ``imprint.3`` (FC1, ``K = 4 * batch_size`` bins by default): row ``i``
      is the constant ``1 / (conv_scale * C*H*W * width_i)`` (an average-intensity
      measurement), bias ``-bin_i / width_i``; the bins are the LOKI
      ``get_bins`` quantiles of ``N(mu, sigma)`` at equal mass ``1/(K+2)``,
      with ``mu, sigma`` the mean and std of the average pixel intensity of
      ``data`` (else of CIFAR-10 in the paper's notebook, 0.473 and 0.125);
    * ``imprint.5`` (FC2): all weights ``fc_scale`` (1000), bias 0.

    Our reading of the paper (and of its released FedAvg notebook): the "scaling"
    convolution isolates clients, the Hardtanh makes each bin a sparse
    one-example window, and the 1000-valued back-projection keeps the signal
    large enough to survive many local steps.

    References
    ----------
    J. C. Zhao, A. Sharma, A. R. Elkordy, Y. H. Ezzeldin, S. Avestimehr,
    S. Bagchi, "LOKI: Large-scale Data Reconstruction Attack against Federated
    Learning through Model Manipulation", IEEE S&P 2024.
    """
    if not 0 <= client < num_clients:
        raise ValueError(f"client slot {client} is outside 0..{num_clients - 1}; choose a client from 0 to {num_clients - 1}")
    c, hgt, wid = input_shape
    if kernel_size % 2 == 0 or kernel_size > min(hgt, wid):  # "same" padding keeps the image's size only then
        raise InputError(f"loki option kernel_size={kernel_size} must be odd and at most the image's side "
                         f"({min(hgt, wid)}), e.g. 3")  # fmt: skip
    base = copy.deepcopy(model)
    n = c * hgt * wid
    k = int(num_bins or 4 * batch_size)
    check_added((num_clients * n + 1) * k + (k + 1) * n, "loki", "num_bins (or batch_size) and num_clients")
    if data is not None:
        avg = data.flatten(1).mean(dim=1)
        mu = float(avg.mean()) if mu is None else mu
        if sigma is None:
            sigma = float(avg.std()) if len(avg) > 1 else 0.0
            if not sigma > 0:  # one example, or all of one brightness: no spread to place bins by
                raise ValueError(f"the {len(avg)} example(s) of data have no spread in average brightness to place its "
                                 "bins by; pass more varied data, or set sigma (e.g. --set sigma=0.12)")  # fmt: skip
    mu = 0.4733630142373343 if mu is None else float(mu)
    sigma = 0.1252652199273531 if sigma is None else float(sigma)
    bins, widths = _loki_bins(k, mu, sigma)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        conv = nn.Conv2d(c, num_clients * c, kernel_size, padding=kernel_size // 2)
        fc1 = nn.Linear(num_clients * n, k)
        fc2 = nn.Linear(k, n)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        centre = kernel_size // 2
        for j in range(c):
            conv.weight[client * c + j, j, centre, centre] = conv_scale
        fc1.weight.copy_((1.0 / conv_scale / n / widths)[:, None].expand(k, num_clients * n))
        fc1.bias.copy_(-bins / widths)
        fc2.weight.fill_(fc_scale)
        fc2.bias.zero_()
    block = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc1, nn.Hardtanh(0.0, 1.0), fc2, nn.ReLU())
    out = FrontEndModel(block, base, input_shape, image_input=True)
    return dry_check(out, input_shape, "loki")
