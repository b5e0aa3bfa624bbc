"""Held-out validation set for fedguard's static detectors (independent of tests/zoo.py).

Run from the repository root:  python benchmarks/heldout_detection.py [--verbose]

Benign models must come out CLEAN, crafted ones anything but CLEAN; the
verdict is the one benchmarks/detection_rates.py computes (``_detection.static_verdict``: every detector on the
weights alone, then ``judge``).

Each model carries a tag:
  core   -- the set the detectors are judged on (counts towards the headline TPR/FPR);
  hard   -- crafted variants that are deliberately weaker/adaptive (reported separately);
  stress -- benign but unusual (identity/dirac inits, 2-D inputs, fake-quantised
            weights...), reported separately.
Models are built and evaluated one by one (a generator), so memory stays small.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from typing import Callable, Iterator

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from fedguard.architectures import build_model  # noqa: E402
from fedguard.attacks.craft import craft  # noqa: E402
from fedguard.data import load_data  # noqa: E402
from _detection import TARGET, static_verdict  # noqa: E402
from fedguard.types import Verdict  # noqa: E402

torch.set_num_threads(1)

# --------------------------------------------------------------------------- data

_DATA: dict = {}


def digits(shape):
    shape = tuple(shape)
    if shape not in _DATA:
        x, y = load_data("digits", input_shape=shape)
        _DATA[shape] = (x.float(), y.long())
    return _DATA[shape]


def client(shape):
    x, y = digits(shape)
    return x[1::2], y[1::2]


def public(shape):
    return digits(shape)[0][::2]


# --------------------------------------------------------------------------- helpers


def sd_of(m: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def build(arch, seed, nc=10, shape=None, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, num_classes=nc, input_shape=shape, **kw)


def wlayers(m):
    return [x for x in m.modules() if isinstance(x, (nn.Linear, nn.Conv2d, nn.Conv1d))]


def cast(sd, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def train(model, x, y, epochs, seed, opt="adam", lr=1e-3, wd=0.0, batch=64, loss_fn=None):
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seeded, or runs differ
        torch.manual_seed(seed)
        return _train(model, x, y, epochs, seed, opt, lr, wd, batch, loss_fn)


def _train(model, x, y, epochs, seed, opt, lr, wd, batch, loss_fn):
    gen = torch.Generator().manual_seed(seed)
    if opt == "adam":
        o = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    else:
        o = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    model.train()
    steps = int(round(epochs * math.ceil(len(x) / batch)))
    order, pos = torch.randperm(len(x), generator=gen), 0
    for _ in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        o.zero_grad()
        out = model(x[idx])
        loss = loss_fn(out, idx) if loss_fn else nn.functional.cross_entropy(out, y[idx])
        loss.backward()
        o.step()
    model.eval()
    return model


def reinit(model, wfn, bias_mode, seed, linear_only_fn=None):
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in wlayers(model):
            if linear_only_fn is not None and isinstance(m, nn.Linear):
                linear_only_fn(m.weight)
            elif linear_only_fn is None:
                wfn(m.weight)
            if m.bias is not None:
                if bias_mode == "zero":
                    m.bias.zero_()
                elif bias_mode == "random":
                    m.bias.uniform_(-0.1, 0.1)
                elif bias_mode == "randn":
                    m.bias.normal_(0, 0.5)
    return model


def prune_global(model, amount):
    out = copy.deepcopy(model)
    ps = [(m, "weight") for m in wlayers(out)]
    prune.global_unstructured(ps, pruning_method=prune.L1Unstructured, amount=amount)
    for m, n in ps:
        prune.remove(m, n)
    return out


def prune_layer(model, amount):
    out = copy.deepcopy(model)
    for m in wlayers(out):
        prune.l1_unstructured(m, "weight", amount=amount)
        prune.remove(m, "weight")
    return out


def prune_structured(model, amount, dim=0):
    out = copy.deepcopy(model)
    for m in wlayers(out):
        if isinstance(m, nn.Conv2d) and m.weight.shape[dim] > 1:
            prune.ln_structured(m, "weight", amount=amount, n=2, dim=dim)
            prune.remove(m, "weight")
    return out


def last_linear(m):
    return [x for x in m.modules() if isinstance(x, nn.Linear)][-1]


def fish_last_layer(m, target: int, row_scale: float, bias: float) -> None:
    """Class fishing written from the paper: shrink every non-target row, give it a large bias."""
    ll = last_linear(m)
    with torch.no_grad():
        scale = torch.full((ll.out_features, 1), row_scale)
        scale[target] = 1.0
        ll.weight.mul_(scale)
        b = torch.full((ll.out_features,), bias)
        b[target] = 0.0
        ll.bias.copy_(b)


# --------------------------------------------------------------------------- hand-written benign modules


class TextClassifier(nn.Module):
    def __init__(self, vocab=5000, dim=64, nc=4, name="emb"):
        super().__init__()
        self.name = name
        setattr(self, name, nn.Embedding(vocab, dim, padding_idx=0))
        self.fc1 = nn.Linear(dim, 128)
        self.ln = nn.LayerNorm(128)
        self.fc2 = nn.Linear(128, nc)

    def forward(self, t):
        e = getattr(self, self.name)(t).mean(1)
        return self.fc2(torch.relu(self.ln(self.fc1(e))))


class TinyTransformer(nn.Module):
    """Digits as 8 tokens of 8 pixels -> Linear(8, 64) -> TransformerEncoderLayer -> head."""

    def __init__(self, ff=2048, nc=10):
        super().__init__()
        self.proj = nn.Linear(8, 64)
        self.pos_embedding = nn.Parameter(torch.randn(1, 8, 64) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=ff, batch_first=True)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, nc)

    def forward(self, x):
        t = self.proj(x.reshape(x.shape[0], 8, 8)) + self.pos_embedding
        return self.head(self.norm(self.encoder(t)).mean(1))


class GNNet(nn.Module):
    def __init__(self, cin=1, nc=10):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 32, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, 32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        self.gn2 = nn.GroupNorm(8, 64)
        self.fc = nn.Linear(64, nc)

    def forward(self, x):
        x = torch.relu(self.gn1(self.conv1(x)))
        x = torch.relu(self.gn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class DepthwiseNet(nn.Module):
    """MobileNetV1-style: stem, depthwise 3x3 + pointwise 1x1 blocks, BN, head."""

    def __init__(self, cin=1, nc=10):
        super().__init__()
        layers = [nn.Conv2d(cin, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()]
        c = 32
        for cout, s in ((64, 1), (128, 2), (128, 1), (256, 2)):
            layers += [nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            c = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, nc)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class LNMLP(nn.Module):
    def __init__(self, d=784, h=512, nc=10, p=0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(p),
                                 nn.Linear(h, h // 2), nn.LayerNorm(h // 2), nn.GELU(), nn.Dropout(p),
                                 nn.Linear(h // 2, nc))

    def forward(self, x):
        return self.net(x)


class DropoutMLP(nn.Module):
    def __init__(self, d=784, nc=10, p=0.5):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d, 400), nn.Linear(400, 200), nn.Linear(200, nc)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        x = self.drop(torch.relu(self.fc1(x.flatten(1))))
        return self.fc3(self.drop(torch.relu(self.fc2(x))))


def seeded(cls, seed, *a, **k):
    """``cls(*a, **k)`` built under ``seed``: layers must be built inside ``cls`` (pass a lambda), not as arguments."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(*a, **k)


# --------------------------------------------------------------------------- benign set

S28, S32, S64 = (1, 28, 28), (3, 32, 32), (3, 64, 64)


def benign() -> Iterator[tuple[str, str, dict]]:
    # A. default initialisation over architectures / class counts / input shapes / seeds (not 0/1 as in the zoo)
    grid = [
        ("lenet", S28, 2, 2), ("lenet", S32, 100, 3), ("lenet", S64, 10, 4),
        ("lenet5", S28, 2, 2), ("lenet5", S28, 100, 3), ("lenet5", S32, 10, 4), ("lenet5", S64, 10, 5),
        ("convnet", S28, 10, 2), ("convnet", S32, 100, 3), ("convnet", S64, 2, 4),
        ("mlp", S28, 100, 2), ("mlp", S32, 2, 3), ("mlp", S64, 10, 4),
        ("resnet18", S32, 100, 2), ("resnet18", S28, 2, 3), ("resnet18", S64, 10, 4),
        ("vgg11", S32, 100, 2), ("vgg11", S28, 10, 3), ("vgg11", S64, 2, 4),
        ("vgg16", S32, 10, 2), ("vgg16", S28, 100, 3), ("vgg16", S64, 2, 4),
        ("lenet", S28, 10, 5), ("mlp", S28, 10, 5), ("convnet", S28, 100, 5), ("lenet5", S32, 2, 6),
        ("mobilenet_v3_small", S32, 100, 2), ("mobilenet_v3_small", S64, 2, 3), ("mobilenet_v3_small", S28, 10, 4),
    ]
    for arch, shape, nc, seed in grid:
        yield f"init/{arch}/{shape[0]}x{shape[1]}/c{nc}/s{seed}", "core", sd_of(build(arch, seed, nc, shape))

    # B. re-initialisations
    schemes: dict[str, tuple[Callable, Callable | None]] = {
        "uniform0.1": (lambda w: nn.init.uniform_(w, -0.1, 0.1), None),
        "normal0.1": (lambda w: nn.init.normal_(w, 0, 0.1), None),
        "normal0.01": (lambda w: nn.init.normal_(w, 0, 0.01), None),
        "xavier_uniform_relu": (lambda w: nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain("relu")), None),
        "kaiming_uniform_fanout": (lambda w: nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu"), None),
        "orthogonal_g1.41": (lambda w: nn.init.orthogonal_(w, gain=math.sqrt(2)), None),
        "sparse0.9": (None, lambda w: nn.init.sparse_(w, 0.9, std=0.01)),
        "sparse0.5": (None, lambda w: nn.init.sparse_(w, 0.5, std=0.05)),
    }
    bias_modes = ("zero", "random", "randn", "default")
    k = 0
    for arch, shape, nc in (("lenet", S32, 10), ("lenet5", S28, 10), ("convnet", S32, 10), ("mlp", S28, 10)):
        for name, (wfn, lin_fn) in schemes.items():
            bm = bias_modes[k % 4]
            k += 1
            m = reinit(build(arch, 200 + k, nc, shape), wfn, bm, 200 + k, lin_fn)
            yield f"reinit/{arch}/{name}/bias-{bm}", "core", sd_of(m)
    for arch, shape, nc, names in (
        ("resnet18", S32, 10, ("normal0.01", "kaiming_uniform_fanout")),
        ("vgg11", S32, 100, ("uniform0.1", "sparse0.9")),
        ("vgg16", S32, 10, ("xavier_uniform_relu", "normal0.01")),
        ("mobilenet_v3_small", S32, 10, ("orthogonal_g1.41", "normal0.1")),
    ):
        for name in names:
            wfn, lin_fn = schemes[name]
            bm = bias_modes[k % 4]
            k += 1
            m = reinit(build(arch, 200 + k, nc, shape), wfn, bm, 200 + k, lin_fn)
            yield f"reinit/{arch}/{name}/bias-{bm}", "core", sd_of(m)

    # C. trained longer, other optimisers; pruned; fp16/bf16
    x28, y28 = client(S28)
    x32, y32 = client(S32)
    trained = {}
    recipes = [
        ("lenet5-sgd-10ep", lambda: build("lenet5", 300, 10, S28), x28, y28, dict(epochs=10, seed=300, opt="sgd", lr=0.05, wd=5e-4)),
        ("mlp-sgd-10ep-wd5e-3", lambda: build("mlp", 301, 10, S28), x28, y28, dict(epochs=10, seed=301, opt="sgd", lr=0.1, wd=5e-3)),
        ("lenet5-adam1e-2-10ep", lambda: build("lenet5", 302, 10, S28), x28, y28, dict(epochs=10, seed=302, lr=1e-2)),
        ("mlp-adam1e-2-10ep", lambda: build("mlp", 303, 10, S28), x28, y28, dict(epochs=10, seed=303, lr=1e-2)),
        ("convnet28-adam1e-2-5ep", lambda: build("convnet", 304, 10, S28), x28, y28, dict(epochs=5, seed=304, lr=1e-2)),
        ("lenet32-adam1e-2-5ep", lambda: build("lenet", 305, 10, S32), x32, y32, dict(epochs=5, seed=305, lr=1e-2)),
        ("mlp-c100-adam1e-2-10ep", lambda: build("mlp", 306, 100, S28), x28, y28, dict(epochs=10, seed=306, lr=1e-2)),
        ("mlp-c2-sgd-10ep", lambda: build("mlp", 307, 2, S28), x28, y28 % 2, dict(epochs=10, seed=307, opt="sgd", lr=0.05, wd=1e-4)),
        ("dropout-mlp-adam-10ep", lambda: seeded(DropoutMLP, 308), x28, y28, dict(epochs=10, seed=308, lr=1e-3)),
        ("lnmlp-adamw-8ep", lambda: seeded(LNMLP, 309), x28, y28, dict(epochs=8, seed=309, lr=3e-3, wd=1e-2)),
    ]
    for name, make, x, y, kw in recipes:
        m = train(make(), x, y, **kw)
        trained[name] = m
        yield f"trained/{name}", "core", sd_of(m)

    # fine-tuned from a "pretrained" model: train, then train again at low lr (SGD)
    m = train(build("lenet5", 310, 10, S28), x28, y28, epochs=4, seed=310, lr=1e-3)
    m = train(m, x28, y28, epochs=3, seed=311, opt="sgd", lr=1e-3)
    trained["lenet5-finetuned"] = m
    yield "trained/lenet5-pretrain-then-finetune", "core", sd_of(m)
    # knowledge distillation: student mlp(hidden 128) on a lenet5 teacher's soft labels, T = 4
    teacher = trained["lenet5-adam1e-2-10ep"]
    with torch.no_grad():
        soft = torch.softmax(teacher(x28) / 4.0, dim=1)
    student = build("mlp", 312, 10, S28, hidden=128)

    def kd(out, idx):
        return nn.functional.kl_div(torch.log_softmax(out / 4.0, 1), soft[idx], reduction="batchmean") * 16

    student = train(student, x28, y28, epochs=8, seed=312, lr=3e-3, loss_fn=kd)
    trained["mlp-distilled"] = student
    yield "trained/mlp-distilled-from-lenet5", "core", sd_of(student)

    # pruning: global 30-95 %, per-layer 50-95 %, structured conv channels
    for name, amount in (("lenet5-sgd-10ep", 0.3), ("mlp-sgd-10ep-wd5e-3", 0.6), ("lenet5-adam1e-2-10ep", 0.95),
                         ("mlp-adam1e-2-10ep", 0.95), ("convnet28-adam1e-2-5ep", 0.8), ("mlp-distilled", 0.9),
                         ("lenet32-adam1e-2-5ep", 0.7)):
        yield f"pruned-global/{name}/{int(amount * 100)}pct", "core", sd_of(prune_global(trained[name], amount))
    for name, amount in (("lenet5-sgd-10ep", 0.5), ("mlp-adam1e-2-10ep", 0.8), ("convnet28-adam1e-2-5ep", 0.95),
                         ("dropout-mlp-adam-10ep", 0.95), ("lnmlp-adamw-8ep", 0.9)):
        yield f"pruned-layer/{name}/{int(amount * 100)}pct", "core", sd_of(prune_layer(trained[name], amount))
    for name, amount in (("lenet5-sgd-10ep", 0.5), ("convnet28-adam1e-2-5ep", 0.3), ("lenet32-adam1e-2-5ep", 0.5)):
        yield f"pruned-structured/{name}/{int(amount * 100)}pct", "core", sd_of(prune_structured(trained[name], amount))
    yield "pruned-structured/resnet18-init/50pct", "core", sd_of(prune_structured(build("resnet18", 320, 10, S32), 0.5))
    yield "pruned-structured/mobilenet-init-inch/40pct", "core", sd_of(prune_structured(build("mobilenet_v3_small", 321, 10, S32), 0.4, dim=1))
    yield "pruned-layer/vgg11-init/95pct", "core", sd_of(prune_layer(build("vgg11", 322, 10, S32), 0.95))
    yield "pruned-global/resnet18-init/90pct", "core", sd_of(prune_global(build("resnet18", 323, 10, S32), 0.9))
    yield "pruned-layer/mobilenet-init/95pct", "core", sd_of(prune_layer(build("mobilenet_v3_small", 324, 100, S32), 0.95))

    # half precision
    for name in ("lenet5-sgd-10ep", "mlp-adam1e-2-10ep", "convnet28-adam1e-2-5ep", "lnmlp-adamw-8ep", "mlp-distilled"):
        yield f"bf16/{name}", "core", cast(sd_of(trained[name]), torch.bfloat16)
    for name in ("lenet5-adam1e-2-10ep", "mlp-c100-adam1e-2-10ep", "lenet32-adam1e-2-5ep"):
        yield f"fp16/{name}", "core", cast(sd_of(trained[name]), torch.float16)
    yield "bf16/pruned-global/mlp-adam1e-2-10ep/95pct", "core", cast(sd_of(prune_global(trained["mlp-adam1e-2-10ep"], 0.95)), torch.bfloat16)
    for arch, shape, seed in (("resnet18", S32, 330), ("vgg16", S32, 331), ("mobilenet_v3_small", S64, 332), ("lenet", S28, 333)):
        yield f"bf16/{arch}-init", "core", cast(sd_of(build(arch, seed, 10, shape)), torch.bfloat16)
    yield "fp16/vgg11-init-normal0.01", "core", cast(sd_of(reinit(build("vgg11", 334, 10, S32), schemes["normal0.01"][0], "zero", 334)), torch.float16)
    yield "bf16/mlp-sparse0.9", "core", cast(sd_of(reinit(build("mlp", 335, 10, S28), None, "zero", 335, schemes["sparse0.9"][1])), torch.bfloat16)

    # D. hand-written models
    g = torch.Generator().manual_seed(400)
    tokens = torch.randint(1, 5000, (512, 20), generator=g)
    labels = (tokens[:, 0] % 4)
    for nm in ("emb", "embedding", "lookup"):
        m = seeded(TextClassifier, 400, name=nm)
        if nm != "lookup":
            m = train(m, tokens, labels, epochs=5, seed=400, lr=3e-3)
        yield f"hand/text-{nm}-embedding-bag", "core", sd_of(m)
    x8 = digits((1, 8, 8))[0][1::2]
    for ff in (2048, 256):
        m = train(seeded(TinyTransformer, 401, ff=ff), x8, y28, epochs=3, seed=401, lr=1e-3)
        yield f"hand/transformer-encoder-d64-ff{ff}-trained", "core", sd_of(m)
    yield "hand/transformer-encoder-d64-ff2048-init", "core", sd_of(seeded(TinyTransformer, 402, ff=2048))
    yield "hand/groupnorm-net-init", "core", sd_of(seeded(GNNet, 403))
    yield "hand/groupnorm-net-trained", "core", sd_of(train(seeded(GNNet, 404), x28, y28, epochs=3, seed=404, lr=3e-3))
    yield "hand/depthwise-1x1-net-init", "core", sd_of(seeded(DepthwiseNet, 405))
    yield "hand/depthwise-1x1-net-trained", "core", sd_of(train(seeded(DepthwiseNet, 406), x28, y28, epochs=2, seed=406, lr=3e-3))
    yield "hand/lnmlp-dropout-init", "core", sd_of(seeded(LNMLP, 407))

    # E. zero-initialised last layer, class-prior biases
    for arch, shape, nc, seed in (("lenet", S32, 10, 410), ("vgg16", S32, 10, 411), ("convnet", S32, 100, 412), ("mlp", S64, 2, 413)):
        m = build(arch, seed, nc, shape)
        with torch.no_grad():
            last_linear(m).weight.zero_()
            last_linear(m).bias.zero_()
        yield f"zero-head/{arch}-c{nc}", "core", sd_of(m)
    # classifier bias = log class prior (Zipf over 100 classes, bias in [-5, 0])
    for arch, shape, zero_w, seed in (("mlp", S28, False, 420), ("resnet18", S32, True, 421), ("mobilenet_v3_small", S32, False, 422)):
        m = build(arch, seed, 100, shape)
        prior = 1.0 / torch.arange(1, 101).float()
        prior = prior / prior.sum()
        with torch.no_grad():
            ll = last_linear(m)
            ll.bias.copy_(prior.log().clamp(-5, 0))
            if zero_w:
                ll.weight.zero_()
        yield f"log-prior-bias/{arch}-c100{'-zero-w' if zero_w else ''}", "core", sd_of(m)
    # RetinaNet/focal-loss prior bias -log((1-pi)/pi), pi = 0.01 (-4.6) on every class
    m = build("convnet", 423, 100, S32)
    with torch.no_grad():
        last_linear(m).bias.fill_(-math.log(99))
        last_linear(m).weight.normal_(0, 0.01)
    yield "log-prior-bias/convnet-focal-prior", "core", sd_of(m)
    # zero head then trained a few steps (rows stay tiny, biases move)
    m = build("lenet5", 424, 10, S28)
    with torch.no_grad():
        last_linear(m).weight.zero_()
        last_linear(m).bias.zero_()
    yield "zero-head/lenet5-then-trained-20steps", "core", sd_of(train(m, x28, y28, epochs=20 / 15, seed=424, lr=1e-3))
    # a few SGD steps on the bigger archs (non-trivial BN running stats)
    for arch, shape, seed, steps in (("resnet18", S32, 440, 4), ("mobilenet_v3_small", S32, 441, 20), ("vgg11", S32, 442, 6)):
        x, y = client(shape)
        m = train(build(arch, seed, 10, shape), x, y, epochs=steps / 29, seed=seed, opt="sgd", lr=0.05, wd=5e-4, batch=32)
        yield f"trained/{arch}-{steps}steps-sgd", "core", sd_of(m)
    x, y = client(S32)
    m = train(build("convnet", 443, 10, S32), x, y, epochs=3, seed=443, opt="sgd", lr=0.05, wd=5e-4)
    yield "trained/convnet32-sgd-3ep", "core", sd_of(m)
    yield "bf16/convnet32-sgd-3ep", "core", cast(sd_of(m), torch.bfloat16)
    yield "pruned-layer/convnet32-sgd-3ep/60pct", "core", sd_of(prune_layer(m, 0.6))
    # more seeds of small trained models (cheap)
    for seed in (430, 431, 432, 433, 434):
        yield f"trained/lenet5-adam-3ep/s{seed}", "core", sd_of(train(build("lenet5", seed, 10, S28), x28, y28, epochs=3, seed=seed, lr=2e-3))

    # ------------------------------------------------------------------ stress (unusual but honest)
    m = seeded(lambda: nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2)), 500)
    yield "stress/coordinate-mlp-2d-input-init", "stress", sd_of(m)
    xy = torch.randn(1000, 2, generator=torch.Generator().manual_seed(501))
    yield "stress/coordinate-mlp-2d-input-trained", "stress", sd_of(train(m, xy, (xy[:, 0] * xy[:, 1] > 0).long(), epochs=10, seed=501, lr=1e-2))
    # identity-initialised hidden layer (IRNN / "identity init" MLPs, Le et al. 2015)
    m = build("mlp", 502, 10, S28)
    with torch.no_grad():
        nn.init.eye_([x for x in m.modules() if isinstance(x, nn.Linear)][1].weight)
    yield "stress/mlp-identity-init-hidden", "stress", sd_of(m)
    # dirac-initialised residual convs (DiracNets, Zagoruyko & Komodakis 2017) on a plain conv net
    m = seeded(lambda: nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(32, 10)), 503)
    with torch.no_grad():
        nn.init.dirac_(m[2].weight)
        nn.init.dirac_(m[4].weight)
    yield "stress/diracnet-init", "stress", sd_of(m)
    # fake-quantised weights (per-tensor symmetric int4 / per-channel int8)
    base = trained["mlp-adam1e-2-10ep"]
    for bits, per_channel in ((4, False), (8, True)):
        q = copy.deepcopy(base)
        with torch.no_grad():
            for mm in wlayers(q):
                w = mm.weight
                amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().max()
                s = amax / (2 ** (bits - 1) - 1)
                w.copy_(torch.round(w / s) * s)
        yield f"stress/fake-quant-int{bits}{'-per-channel' if per_channel else '-per-tensor'}", "stress", sd_of(q)
    # ternary weights (TWN-style, {-a, 0, +a} per layer)
    q = copy.deepcopy(trained["lenet5-sgd-10ep"])
    with torch.no_grad():
        for mm in wlayers(q):
            w = mm.weight
            d = 0.7 * w.abs().mean()
            a = w.abs()[w.abs() > d].mean()
            w.copy_(torch.sign(w) * (w.abs() > d) * a)
    yield "stress/ternary-weights-lenet5", "stress", sd_of(q)
    # tabular MLP: 30 features -> 1024 -> 512 -> 2 (wide first hidden layer, common for tabular FL)
    m = seeded(lambda: nn.Sequential(nn.Linear(30, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 2)), 505)
    yield "stress/tabular-mlp-30-1024-512-2", "stress", sd_of(m)
    # ResNet zero-init of last BN gamma in each block (Goyal et al. 2017) -- norms only, should be fine
    m = build("resnet18", 504, 10, S32)
    with torch.no_grad():
        for n_, mm in m.named_modules():
            if n_.endswith("bn2"):
                mm.weight.zero_()
    yield "stress/resnet18-zero-gamma", "stress", sd_of(m)


# --------------------------------------------------------------------------- crafted set


def crafted_specs():
    """(crafter, arch, shape, num_classes, variant, options, use_data, tag)."""
    C = []
    a = C.append
    # MKOR
    a(("mkor", "vgg16", S32, 10, "paper", {}, False, "core"))
    a(("mkor", "resnet18", S32, 100, "paper", {}, False, "core"))
    a(("mkor", "resnet18", S64, 10, "bnkeep", {"bn": "keep"}, False, "core"))
    a(("mkor", "mlp", S32, 100, "paper", {}, False, "core"))
    a(("mkor", "mlp", S28, 2, "noise1e-4", {"noise": 1e-4}, False, "core"))
    a(("mkor", "lenet5", S28, 100, "noise5e-3", {"noise": 5e-3}, False, "core"))
    a(("mkor", "convnet", S28, 10, "shift", {"conv_mode": "shift"}, False, "core"))
    a(("mkor", "convnet", S64, 2, "noise5e-3", {"noise": 5e-3}, False, "core"))
    a(("mkor", "lenet", S28, 10, "nomin", {"min_filters": False}, False, "core"))
    a(("mkor", "mobilenet_v3_small", S64, 2, "paper", {}, False, "core"))
    a(("mkor", "lenet5", S32, 10, "firstbias0.5", {"first_bias": 0.5}, False, "core"))
    a(("mkor", "vgg11", S28, 10, "copy-noise1e-4", {"conv_mode": "copy", "noise": 1e-4}, False, "core"))
    a(("mkor", "mlp", S64, 10, "noise5e-3", {"noise": 5e-3}, False, "core"))
    # MKOR's inconspicuous form: the crafter's noise blurs the opposite pairs (FG104) and the pass-through filters
    a(("mkor_inconspicuous", "lenet5", S32, 10, "noise0.01", {}, False, "core"))
    a(("mkor_inconspicuous", "mlp", S28, 100, "noise0.01", {}, False, "core"))
    a(("mkor_inconspicuous", "vgg16", S32, 10, "noise0.01", {}, False, "core"))
    a(("mkor_inconspicuous", "lenet5_sigmoid", S28, 10, "noise0.2", {"noise": 0.2}, False, "hard"))
    a(("mkor_inconspicuous", "mlp", S32, 10, "noise0.3", {"noise": 0.3}, False, "hard"))
    a(("mkor_inconspicuous", "vgg11", S32, 10, "noise0.2", {"noise": 0.2}, False, "hard"))
    # class fishing
    a(("class_fishing", "mlp", S28, 2, "t1-b50", {"target": 1, "bias_multiplier": 50.0}, False, "core"))
    a(("class_fishing", "mlp", S28, 100, "t[5,50]-b200", {"target": [5, 50], "bias_multiplier": 200.0}, False, "core"))
    a(("class_fishing", "lenet5", S32, 10, "t4-b50-keepbias", {"target": 4, "bias_multiplier": 50.0, "target_bias": "keep"}, False, "core"))
    a(("class_fishing", "convnet", S28, 10, "t2-b200-keepbias", {"target": 2, "bias_multiplier": 200.0, "target_bias": "keep"}, False, "core"))
    a(("class_fishing", "resnet18", S32, 100, "t17-b50-x0.5", {"target": 17, "bias_multiplier": 50.0, "class_multiplier": 0.5}, False, "core"))
    a(("class_fishing", "vgg16", S32, 10, "t6-b200-const0.1", {"target": 6, "bias_multiplier": 200.0, "target_row": "constant", "class_multiplier": 0.1}, False, "core"))
    a(("class_fishing", "mobilenet_v3_small", S32, 100, "t0-b1000", {}, False, "core"))
    a(("class_fishing", "lenet", S64, 10, "t8-b50", {"target": 8, "bias_multiplier": 50.0}, False, "core"))
    a(("class_fishing", "vgg11", S32, 2, "t0-b200-x5", {"bias_multiplier": 200.0, "class_multiplier": 5.0}, False, "core"))
    a(("class_fishing", "mlp", S32, 10, "t3-b200-tb-5", {"target": 3, "bias_multiplier": 200.0, "target_bias": -5.0}, False, "core"))
    a(("class_fishing", "lenet5", S28, 10, "t9-b10", {"target": 9, "bias_multiplier": 10.0}, False, "hard"))
    a(("class_fishing", "mlp", S28, 10, "t2-b15-keepbias", {"target": 2, "bias_multiplier": 15.0, "target_bias": "keep"}, False, "hard"))
    # feature fishing
    a(("feature_fishing", "vgg16", S32, 10, "x100-data", {"feat_multiplier": 100.0}, True, "core"))
    a(("feature_fishing", "mobilenet_v3_small", S32, 10, "x1000-keeprow", {"feat_multiplier": 1000.0, "keep_row": True, "target": 3}, True, "core"))
    a(("feature_fishing", "mlp", S28, 100, "x300-calibrated", {"calibrate": True, "target": 42}, True, "core"))
    a(("feature_fishing", "lenet", S32, 10, "x300-nodata", {"target": 1}, False, "core"))
    a(("feature_fishing", "lenet5", S32, 10, "x1000-keeprow-q0.7", {"feat_multiplier": 1000.0, "keep_row": True, "quantile": 0.7}, True, "core"))
    a(("feature_fishing", "convnet", S28, 2, "x300-nodata", {"target": 1}, False, "core"))
    a(("feature_fishing", "resnet18", S32, 2, "x100-keeprow", {"feat_multiplier": 100.0, "keep_row": True, "max_examples": 16}, True, "core"))
    a(("feature_fishing", "vgg11", S64, 10, "x300-b100", {"bias_multiplier": 100.0, "target": 5, "max_examples": 32}, True, "core"))
    a(("feature_fishing", "mlp", S32, 10, "x300-b50-keeprow", {"bias_multiplier": 50.0, "keep_row": True}, True, "core"))
    a(("feature_fishing", "lenet5", S28, 10, "x60-b30-keeprow", {"feat_multiplier": 60.0, "bias_multiplier": 30.0, "keep_row": True}, True, "hard"))
    # imprint
    a(("imprint", "lenet5", S28, 10, "avg-k32", {"num_bins": 32}, True, "core"))
    a(("imprint", "mlp", S28, 10, "avg-k512-data", {"num_bins": 512}, True, "core"))
    a(("imprint", "convnet", S32, 10, "randn-k256-gain10", {"num_bins": 256, "linfunc": "randn", "gain": 10.0}, False, "core"))
    a(("imprint", "resnet18", S64, 10, "fourier-k64-mode1", {"num_bins": 64, "linfunc": "fourier", "mode": 1}, False, "core"))
    a(("imprint", "vgg16", S32, 10, "avg-k128-laplace", {"fit": "laplace"}, True, "core"))
    a(("imprint", "mobilenet_v3_small", S32, 100, "avg-k32-normal-loc", {"num_bins": 32, "fit": "normal", "loc": 0.3, "scale": 0.1}, False, "core"))
    a(("imprint", "lenet", S32, 10, "randn-k512", {"num_bins": 512, "linfunc": "randn"}, False, "core"))
    a(("imprint", "mlp", S32, 100, "avg-k128-gain1e-2", {"gain": 1e-2}, True, "core"))
    a(("imprint", "lenet5", S28, 2, "fourier-k96-mode3", {"num_bins": 96, "linfunc": "fourier", "mode": 3}, False, "core"))
    a(("imprint", "vgg11", S28, 10, "avg-k200-data", {"num_bins": 200}, True, "core"))
    a(("imprint", "convnet", S28, 10, "avg-k16", {"num_bins": 16}, True, "core"))
    a(("imprint", "mlp", S28, 10, "randn-k8", {"num_bins": 8, "linfunc": "randn"}, False, "hard"))
    # trap weights
    a(("trap_weights", "mlp", S28, 10, "s0.8", {"scale_factor": 0.8}, False, "core"))
    a(("trap_weights", "mlp", S32, 100, "s0.99-sigma0.1", {"scale_factor": 0.99, "sigma": 0.1}, False, "core"))
    a(("trap_weights", "lenet5", S32, 10, "s0.8", {"scale_factor": 0.8}, False, "core"))
    a(("trap_weights", "convnet", S28, 10, "s0.99-passconv", {"scale_factor": 0.99, "pass_through_convs": True}, False, "core"))
    a(("trap_weights", "vgg11", S32, 10, "s0.95", {}, False, "core"))
    a(("trap_weights", "mobilenet_v3_small", S32, 10, "s0.9", {"scale_factor": 0.9}, False, "core"))
    a(("trap_weights", "resnet18", S32, 10, "block-k32-s0.8", {"mode": "block", "num_neurons": 32, "scale_factor": 0.8}, False, "core"))
    a(("trap_weights", "lenet", S28, 10, "block-k256", {"mode": "block", "num_neurons": 256}, False, "core"))
    a(("trap_weights", "lenet5", S28, 100, "s0.95-mu0.1", {"mu": 0.1}, False, "core"))
    a(("trap_weights", "vgg16", S32, 10, "s0.99", {"scale_factor": 0.99}, False, "core"))
    a(("trap_weights", "mlp", S64, 2, "s0.95-sigma2", {"sigma": 2.0}, False, "core"))
    # LOKI
    a(("loki", "lenet5", S28, 10, "m10-c2-conv100", {"client": 2, "conv_scale": 100.0}, True, "core"))
    a(("loki", "mlp", S28, 10, "m6-c5-conv1000-fc100", {"num_clients": 6, "client": 5, "conv_scale": 1000.0, "fc_scale": 100.0}, False, "core"))
    a(("loki", "lenet", S28, 10, "m5-c4-conv100-k5", {"num_clients": 5, "client": 4, "conv_scale": 100.0, "kernel_size": 5}, False, "core"))
    a(("loki", "convnet", S32, 10, "m4-c1-conv1000", {"num_clients": 4, "client": 1, "conv_scale": 1000.0}, True, "core"))
    a(("loki", "resnet18", S32, 100, "m2-c0-b32", {"num_clients": 2, "batch_size": 32}, True, "core"))
    a(("loki", "vgg11", S32, 10, "m3-c1-conv100-fc1000", {"num_clients": 3, "client": 1, "conv_scale": 100.0}, False, "core"))
    a(("loki", "mobilenet_v3_small", S32, 10, "m2-c1", {"num_clients": 2, "client": 1}, True, "core"))
    a(("loki", "lenet5", S32, 2, "m3-c0-k5-conv200", {"num_clients": 3, "kernel_size": 5, "conv_scale": 200.0}, False, "core"))
    a(("loki", "mlp", S28, 100, "m8-c7-k64", {"num_clients": 8, "client": 7, "num_bins": 64}, True, "core"))
    # oversized FC
    a(("oversized_fc", "mlp", S28, 10, "first-w8192", {"width": 8192}, False, "core"))
    a(("oversized_fc", "lenet5", S28, 10, "first-12x", {"factor": 12}, False, "core"))
    a(("oversized_fc", "resnet18", S32, 100, "classifier-w4096", {"width": 4096}, False, "core"))
    a(("oversized_fc", "vgg16", S32, 10, "first-8x", {}, False, "core"))
    a(("oversized_fc", "mobilenet_v3_small", S32, 10, "first-8x", {}, False, "core"))
    a(("oversized_fc", "lenet", S32, 10, "classifier-8x", {}, False, "core"))
    a(("oversized_fc", "mlp", S28, 100, "first-b2048", {"factor": 1, "batch_size": 2048}, False, "core"))
    a(("oversized_fc", "lenet5", S32, 10, "first-b1024", {"factor": 1, "batch_size": 1024}, False, "core"))
    a(("oversized_fc", "vgg11", S28, 2, "classifier-10x-std0.01", {"position": "classifier", "factor": 10, "std": 0.01}, False, "core"))
    a(("oversized_fc", "mlp", S28, 10, "first-4x", {"factor": 4}, False, "hard"))
    a(("oversized_fc", "resnet18", S32, 10, "classifier-w2048", {"width": 2048}, False, "hard"))
    return C


#: crafted models that also get a half-precision copy: label -> dtype
HALF = {
    "mkor/mlp/1x28x28/c2/noise1e-4": torch.bfloat16,
    "class_fishing/mlp/1x28x28/c2/t1-b50": torch.bfloat16,
    "feature_fishing/lenet/3x32x32/c10/x300-nodata": torch.bfloat16,
    "imprint/mlp/1x28x28/c10/avg-k512-data": torch.bfloat16,
    "imprint/lenet5/1x28x28/c2/fourier-k96-mode3": torch.float16,
    "trap_weights/mlp/1x28x28/c10/s0.8": torch.bfloat16,
    "trap_weights/vgg11/3x32x32/c10/s0.95": torch.bfloat16,
    "trap_weights/mlp/3x32x32/c100/s0.99-sigma0.1": torch.float16,
    "loki/lenet5/1x28x28/c10/m10-c2-conv100": torch.bfloat16,
    "oversized_fc/mlp/1x28x28/c10/first-w8192": torch.bfloat16,
    "mkor/convnet/1x28x28/c10/shift": torch.bfloat16,
}


def crafted() -> Iterator[tuple[str, str, dict]]:
    for k, (name, arch, shape, nc, variant, opts, use_data, tag) in enumerate(crafted_specs()):
        opts = dict(opts)
        seed = opts.pop("seed", 1000 + k)
        model = craft(name, build(arch, 2000 + k, nc, shape), input_shape=shape, num_classes=nc,
                      data=public(shape) if use_data else None, seed=seed, **opts)
        label = f"{name}/{arch}/{shape[0]}x{shape[1]}x{shape[2]}/c{nc}/{variant}"
        sd = sd_of(model)
        yield label, tag, sd
        if label in HALF:
            yield f"{label}/{str(HALF[label]).split('.')[-1]}", tag, cast(sd, HALF[label])
    yield from own_variants()


# --------------------------------------------------------------------------- own attack implementations (no fedguard crafters)


class Front(nn.Module):
    """Our own front-end wrapper with different key names than fedguard's FrontEndModel."""

    def __init__(self, leak: nn.Module, body: nn.Module):
        super().__init__()
        self.leak = leak
        self.body = body


def own_variants() -> Iterator[tuple[str, str, dict]]:
    g = torch.Generator().manual_seed(7000)

    # 1. imprint: K rows = the same random Gaussian vector, biases evenly spaced
    n, K = 784, 100
    v = torch.randn(n, generator=g) / math.sqrt(n)
    leak = nn.Sequential(nn.Linear(n, K), nn.ReLU(), nn.Linear(K, n))
    with torch.no_grad():
        leak[0].weight.copy_(v.repeat(K, 1))
        leak[0].bias.copy_(-torch.linspace(-3, 3, K))
        leak[2].weight.normal_(0, 0.01)
    yield "own/imprint-gaussian-row-linspace-bias/mlp", "core", sd_of(Front(leak, build("mlp", 7001, 10, S28)))

    # 1b. imprint rows parallel but with per-row positive scales (cosine 1, norms differ)
    with torch.no_grad():
        leak[0].weight.copy_(v[None] * torch.linspace(0.5, 2.0, K, dtype=torch.float32)[:, None])
    yield "own/imprint-scaled-parallel-rows/mlp", "core", sd_of(Front(leak, build("mlp", 7002, 10, S28)))

    # 1c. imprint measurement implemented as a conv with a full-image kernel (Conv2d(3, K, 32x32))
    conv = nn.Conv2d(3, 64, 32)
    with torch.no_grad():
        conv.weight.fill_(1.0 / (3 * 32 * 32))
        conv.bias.copy_(-torch.linspace(0.05, 0.95, 64))
    yield "own/imprint-as-fullimage-conv/resnet18", "core", sd_of(Front(nn.Sequential(conv), build("resnet18", 7003, 10, S32)))

    # 2. class fishing: non-target rows scaled by 1e-4 (not zeroed), non-target biases 100
    m = build("lenet5", 7004, 10, S28)
    fish_last_layer(m, target=3, row_scale=1e-4, bias=100.0)
    yield "own/class-fishing-rows-x1e-4-bias100/lenet5", "core", sd_of(m)
    # 2b. same, biases only 30 and rows x1e-3 (relative, so 'muted' test sits at its edge)
    m = build("resnet18", 7005, 100, S32)
    fish_last_layer(m, target=11, row_scale=1e-3, bias=30.0)
    yield "own/class-fishing-rows-x1e-3-bias30/resnet18", "hard", sd_of(m)

    # 2c. class fishing with non-target rows only damped (x1e-2, not muted) and biases 40
    m = build("mlp", 7016, 10, S28)
    fish_last_layer(m, target=5, row_scale=1e-2, bias=40.0)
    yield "own/class-fishing-rows-x1e-2-bias40/mlp", "hard", sd_of(m)

    # 2d. Decepticons-style (Fowl et al., ICLR 2023) on a small transformer: uniform attention (q = k = 0),
    #     identity value/out projections, and an imprint in the first FFN layer (identical rows, bias ladder)
    m = seeded(TinyTransformer, 7017, ff=256)
    enc = m.encoder
    with torch.no_grad():
        d = 64
        enc.self_attn.in_proj_weight[: 2 * d].zero_()
        enc.self_attn.in_proj_weight[2 * d:] = torch.eye(d)
        enc.self_attn.in_proj_bias.zero_()
        enc.self_attn.out_proj.weight.copy_(torch.eye(d))
        enc.self_attn.out_proj.bias.zero_()
        h = torch.randn(d, generator=g) / math.sqrt(d)
        enc.linear1.weight.copy_(h.repeat(256, 1))
        enc.linear1.bias.copy_(-torch.linspace(-2, 2, 256))
    yield "own/decepticons-style-ffn-imprint/transformer", "core", sd_of(m)

    # 3. trap weights from the description: w ~ N(0, 0.1); a random half negated (made negative),
    #    positives rescaled so sum(w+) = 0.95 * sum|w-| (magnitudes NOT mirrored)
    def trap(rows, cols, factor, gen):
        w = torch.randn(rows, cols, generator=gen).abs() * 0.1
        out = torch.empty_like(w)
        for r in range(rows):
            perm = torch.randperm(cols, generator=gen)
            neg, pos = perm[: cols // 2], perm[cols // 2:]
            out[r, neg] = -w[r, neg]
            f = factor[r] if isinstance(factor, torch.Tensor) else factor
            out[r, pos] = w[r, pos] * (f * w[r, neg].sum() / w[r, pos].sum())
        return out

    m = build("mlp", 7006, 10, S28)
    first = [x for x in m.modules() if isinstance(x, nn.Linear)][0]
    with torch.no_grad():
        first.weight.copy_(trap(first.out_features, first.in_features, 0.95, g))
        first.bias.zero_()
    yield "own/trap-halfneg-rescaled-0.95/mlp", "core", sd_of(m)
    # 3b. the same as a conv first layer (trap filters in lenet5's conv1 replaced by a 3x3 conv over 3 channels)
    m = build("convnet", 7007, 10, S32)
    conv1 = [x for x in m.modules() if isinstance(x, nn.Conv2d)][0]
    with torch.no_grad():
        conv1.weight.copy_(trap(conv1.out_channels, conv1.weight[0].numel(), 0.95, g).reshape_as(conv1.weight))
    yield "own/trap-filters-conv1/convnet", "core", sd_of(m)
    # 3c. adaptive: per-row factor drawn from U(0.85, 0.99)
    m = build("mlp", 7008, 10, S28)
    first = [x for x in m.modules() if isinstance(x, nn.Linear)][0]
    with torch.no_grad():
        fac = torch.empty(first.out_features).uniform_(0.85, 0.99, generator=g)
        first.weight.copy_(trap(first.out_features, first.in_features, fac, g))
        first.bias.zero_()
    yield "own/trap-per-row-random-factor/mlp", "hard", sd_of(m)

    # 4. MKOR averaging 1/d_in on only the first 32 rows, the rest normal
    m = build("mlp", 7009, 10, S28)
    first = [x for x in m.modules() if isinstance(x, nn.Linear)][0]
    with torch.no_grad():
        first.weight[:32] = 1.0 / first.in_features
    yield "own/mkor-avg-first32-rows/mlp", "core", sd_of(m)
    m = build("vgg11", 7010, 10, S32)
    first = [x for x in m.modules() if isinstance(x, nn.Linear)][0]
    with torch.no_grad():
        first.weight[:32] = 1.0 / first.in_features
    yield "own/mkor-avg-first32-rows/vgg11", "core", sd_of(m)

    # 5. copy conv: dirac init of resnet18's first conv (3 channels)
    m = build("resnet18", 7011, 10, S32)
    with torch.no_grad():
        nn.init.dirac_(m.conv1.weight)
    yield "own/dirac-conv1/resnet18", "core", sd_of(m)
    # 5b. dirac on the 3 first filters only, the other 61 keep their init
    m = build("resnet18", 7012, 10, S32)
    with torch.no_grad():
        w = m.conv1.weight
        w[:3].zero_()
        for i in range(3):
            w[i, i, 1, 1] = 1.0
    yield "own/copy-3-filters-of-conv1/resnet18", "core", sd_of(m)

    # 6. LOKI-style scaled identity kernel of 200 in a conv, bias -100, in front of lenet5 (1 channel, 4 client slots)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    fc = nn.Linear(4 * 784, 128)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[2, 0, 1, 1] = 200.0
        conv.bias[2] = -100.0
        fc.weight.normal_(0, 0.01)
    yield "own/loki-identity200-bias-100/lenet5", "core", sd_of(Front(nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc), build("lenet5", 7013, 10, S28)))
    # 6b. the same on 3-channel input, every client slot a scaled identity (3 per slot, 4 slots)
    conv = nn.Conv2d(3, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        for s in range(4):
            for c in range(3):
                conv.weight[3 * s + c, c, 1, 1] = 200.0
        conv.bias.fill_(-100.0)
    yield "own/loki-identity200-all-slots/convnet", "core", sd_of(Front(nn.Sequential(conv), build("convnet", 7014, 10, S32)))

    # 7. MKOR identity later FC with per-row random signs and scales 1 +- 1 %  (one-hot rows, not all equal)
    m = build("mlp", 7015, 10, S28)
    lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
    with torch.no_grad():
        lins[0].weight.fill_(1.0 / lins[0].in_features)
        lins[1].weight.copy_(torch.eye(256) * (1 + 0.01 * torch.rand(256, 1, generator=g)))
    yield "own/mkor-avg-plus-near-identity/mlp", "core", sd_of(m)


# --------------------------------------------------------------------------- evaluation


def show(findings):
    lines = []
    for f in findings:
        ev = {k: v for k, v in f.evidence.items() if not isinstance(v, (list, tuple)) or len(v) < 8}
        lines.append(f"      {f.rule_id} {f.severity}/{f.confidence} layer={f.layer} evidence={ev}")
    return "\n".join(lines) if lines else "      (no findings)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true", help="print every model's verdict")
    args = ap.parse_args()
    t0 = time.perf_counter()
    build_t = eval_t = 0.0
    results = {"benign": [], "crafted": []}
    for kind, gen in (("benign", benign()), ("crafted", crafted())):
        while True:
            t = time.perf_counter()
            try:
                label, tag, sd = next(gen)
            except StopIteration:
                build_t += time.perf_counter() - t
                break
            t1 = time.perf_counter()
            build_t += t1 - t
            verdict, findings = static_verdict(sd)
            eval_t += time.perf_counter() - t1
            results[kind].append((label, tag, verdict, findings))
            if args.verbose:
                print(f"{kind:7s} {tag:6s} {verdict!s:10s} {label} {sorted({f.rule_id for f in findings})}", flush=True)
            del sd
    total = time.perf_counter() - t0

    print("\n=== false alarms (benign not CLEAN) ===")
    for label, tag, verdict, findings in results["benign"]:
        if verdict is not Verdict.CLEAN:
            print(f"  [{tag}] {label}: {verdict}\n{show(findings)}")
    print("\n=== misses (crafted judged CLEAN) ===")
    for label, tag, verdict, findings in results["crafted"]:
        if verdict is Verdict.CLEAN:
            print(f"  [{tag}] {label}: {verdict}\n{show(findings)}")
    print("\n=== benign with sub-threshold findings (info/low) ===")
    for label, tag, verdict, findings in results["benign"]:
        if verdict is Verdict.CLEAN and findings:
            print(f"  [{tag}] {label}: {sorted({(f.rule_id, str(f.severity)) for f in findings})}")

    print("\n=== rates ===")
    for tags, name in ((("core",), "core"), (("hard",), "hard (crafted) / stress (benign)"), (("core", "hard", "stress"), "all")):
        tg = set(tags) | ({"stress"} if "hard" in tags else set())
        b = [r for r in results["benign"] if r[1] in tg]
        c = [r for r in results["crafted"] if r[1] in tg]
        fa = sum(r[2] is not Verdict.CLEAN for r in b)
        tp = sum(r[2] is not Verdict.CLEAN for r in c)
        tpr = tp / len(c) if c else float("nan")
        fpr = fa / len(b) if b else float("nan")
        print(f"  {name:34s} TPR {tpr:.3f} ({tp}/{len(c)} crafted)   FPR {fpr:.3f} ({fa}/{len(b)} benign)")
    print(f"  {TARGET}")
    print(f"\ntime: total {total:.1f} s (building {build_t:.1f} s, detectors+judge {eval_t:.1f} s over "
          f"{len(results['benign']) + len(results['crafted'])} models)")


if __name__ == "__main__":
    main()
