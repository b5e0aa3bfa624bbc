"""Built-in architectures, ``module:callable`` loading, and their one-line errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fedguard.architectures import (
    ARCHITECTURES,
    ArchSpec,
    build_model,
    check_input_shape,
    parse_input_shape,
    resolve_input_shape,
)
from fedguard.errors import InputError

BUILTINS = ["lenet", "lenet5", "lenet5_sigmoid", "lenet5_stride2", "convnet", "mlp", "resnet18", "vgg11", "vgg16", "mobilenet_v3_small"]


def test_registry_lists_every_builtin_with_a_spec():
    assert ARCHITECTURES.names() == BUILTINS
    for name, spec in ARCHITECTURES.items():
        assert isinstance(spec, ArchSpec) and spec.name == name
        assert len(spec.input_shape) == 3 and spec.description and "\n" not in spec.description
        assert resolve_input_shape(name) == spec.input_shape


@pytest.mark.parametrize("shape", [None, (1, 28, 28), (3, 32, 32)], ids=["default", "1x28x28", "3x32x32"])
@pytest.mark.parametrize("arch", BUILTINS)
def test_builtin_builds_and_runs(arch, shape):
    torch.manual_seed(0)
    c, h, w = resolve_input_shape(arch, shape)
    for num_classes in (10, 100):
        model = build_model(arch, num_classes=num_classes, input_shape=shape)
        assert isinstance(model, nn.Module) and model.training
        out = model(torch.rand(2, c, h, w))
        assert out.shape == (2, num_classes) and torch.isfinite(out).all()
    out.sum().backward()  # trains: every parameter receives a gradient
    assert all(p.grad is not None for p in model.parameters())


def test_lenet_is_the_dlg_variant():
    model = build_model("lenet", 10, (3, 32, 32))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size, m.stride, m.padding) for m in convs] == [
        (12, (5, 5), (s, s), (2, 2)) for s in (2, 2, 1, 1)
    ]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 4
    (fc,) = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert fc.in_features == 768  # 12 x 8 x 8, as in the paper's code
    assert build_model("lenet", 10, (1, 28, 28)).classifier[0].in_features == 12 * 7 * 7


def test_lenet5_classic_sizes():
    model = build_model("lenet5", 10)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(400, 120), (120, 84), (84, 10)]


def test_mlp_hidden_width():
    model = build_model("mlp", 7, (1, 28, 28), hidden=32)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [(784, 32), (32, 32), (32, 7)]
    with pytest.raises(InputError, match="hidden"):
        build_model("mlp", 10, hidden=0)


# torchvision.models.resnet18().state_dict(): first keys, downsample keys, last keys; 122 in all.
TORCHVISION_RESNET18_FIRST = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
    "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var", "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight", "layer1.0.bn2.weight",
]  # fmt: skip
TORCHVISION_RESNET18_DOWNSAMPLE = [
    f"layer{i}.0.downsample.{j}" for i in (2, 3, 4) for j in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked")
]
TORCHVISION_RESNET18_LAST = [
    "layer4.1.conv2.weight", "layer4.1.bn2.weight", "layer4.1.bn2.bias", "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var", "layer4.1.bn2.num_batches_tracked", "fc.weight", "fc.bias",
]  # fmt: skip


def test_resnet18_has_torchvision_key_names_and_both_stems():
    with torch.device("meta"):  # no memory, no init cost
        big = build_model("resnet18", 1000, (3, 224, 224))
    small = build_model("resnet18", 10, (3, 32, 32))
    for model in (big, small):
        keys = list(model.state_dict())
        assert len(keys) == 122
        assert keys[:14] == TORCHVISION_RESNET18_FIRST
        assert keys[-8:] == TORCHVISION_RESNET18_LAST
        assert [k for k in keys if "downsample" in k] == TORCHVISION_RESNET18_DOWNSAMPLE
    assert sum(p.numel() for p in big.parameters()) == 11_689_512  # torchvision's count
    assert big.conv1.weight.shape == (64, 3, 7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert small.conv1.weight.shape == (64, 3, 3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    # a state_dict with torchvision's names and shapes loads (here: from another instance)
    other = build_model("resnet18", 10, (3, 32, 32))
    other.load_state_dict(small.state_dict())


def test_vgg_torchvision_names_and_classifiers():
    small = build_model("vgg11", 10, (3, 32, 32))
    keys = list(small.state_dict())
    assert keys[:2] == ["features.0.weight", "features.0.bias"]
    assert [k for k in keys if k.startswith("classifier")] == [
        f"classifier.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    ]
    assert small.classifier[0].in_features == 512
    conv_idx = [int(k.split(".")[1]) for k in keys if k.startswith("features") and k.endswith("weight")]
    assert conv_idx == [0, 3, 6, 8, 11, 13, 16, 18]  # torchvision vgg11 feature indices
    with torch.device("meta"):
        big11 = build_model("vgg11", 1000, (3, 224, 224))
        big16 = build_model("vgg16", 1000, (3, 224, 224))
    assert sum(p.numel() for p in big11.parameters()) == 132_863_336
    assert sum(p.numel() for p in big16.parameters()) == 138_357_544
    assert [k for k in big16.state_dict() if k.startswith("classifier")] == [
        f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
    ]


def test_mobilenet_v3_small_torchvision_structure():
    with torch.device("meta"):
        model = build_model("mobilenet_v3_small", 1000, (3, 224, 224))
    keys = list(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 2_542_856  # torchvision's count
    assert keys[:2] == ["features.0.0.weight", "features.0.1.weight"]
    assert "features.1.block.1.fc1.weight" in keys and "features.1.block.1.fc2.bias" in keys
    assert "features.12.0.weight" in keys and "features.13.0.weight" not in keys
    assert [k for k in keys if k.startswith("classifier")] == [
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"
    ]


# --------------------------------------------------------------------------- input shapes


def test_parse_input_shape():
    assert parse_input_shape("1,28,28") == (1, 28, 28)
    assert parse_input_shape("3x32x32") == (3, 32, 32)
    assert parse_input_shape(" (3, 64, 64) ") == (3, 64, 64)
    for bad in ["", "1,28", "1,28,28,28", "a,b,c", "0,28,28", "1,-2,28", "1.5,28,28"]:
        with pytest.raises(InputError, match="C,H,W"):
            parse_input_shape(bad)
    assert check_input_shape([1, 8, 8]) == (1, 8, 8)
    with pytest.raises(InputError):
        check_input_shape((1, 8))


@pytest.mark.parametrize("arch,shape", [("lenet5", (1, 4, 4)), ("convnet", (3, 4, 4))])
def test_too_small_input_is_a_clear_error(arch, shape):
    with pytest.raises(InputError, match=rf"{arch}.*cannot take input shape {','.join(map(str, shape))}.* e\.g\. input_shape ") as err:
        build_model(arch, 10, shape)
    assert "\n" not in str(err.value)


def test_too_large_input_says_to_use_smaller_images():
    with pytest.raises(InputError, match=r"lenet5' at input shape 1,400000,400000 needs more memory.*use smaller images"):
        build_model("lenet5", 10, (1, 400000, 400000))  # terabytes: more than any machine it runs on


def test_unknown_arch_lists_valid_names():
    with pytest.raises(InputError) as err:
        build_model("resnet1800")
    msg = str(err.value)
    assert "resnet1800" in msg and all(name in msg for name in BUILTINS) and "module:callable" in msg
    with pytest.raises(InputError, match="lenet5"):
        resolve_input_shape("nope")


def test_bad_num_classes_and_kwargs():
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(InputError, match="^bad num_classes "):  # named as the argument called from Python
            build_model("lenet", bad)
    # a size past torch's 64-bit sizes had reached it as an internal error (TypeError: Overflow when unpacking long)
    for huge in (2**63, 10**20, 2**31):
        with pytest.raises(InputError, match=r"^bad num_classes: \d+ is more than fedguard takes \(at most 2\^31 - 1"):
            build_model("lenet5", huge)
        with pytest.raises(InputError, match=r"^bad input_shape .* is more than fedguard takes"):
            build_model("lenet5", 10, (1, 28, huge))
        with pytest.raises(InputError, match=r"^bad --input-shape .* is more than fedguard takes.*C,H,W"):  # the flag's text
            parse_input_shape(f"{huge},28,28")
    with pytest.raises(InputError, match="hidden"):
        build_model("lenet", 10, hidden=12)


# --------------------------------------------------------------------------- module:callable

USER_MODULE = """
import torch
from torch import nn

input_shape = (1, 12, 12)

def tiny(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(144, num_classes))

def shaped(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))

def fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 5))

class Net(nn.Module):
    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.fc = nn.Linear(144, num_classes)
    def forward(self, x):
        return self.fc(x.flatten(1))

def broken(num_classes=10):
    raise ValueError("no weights for you")

def not_a_model(num_classes=10):
    return 42

def exits(num_classes=10):
    raise SystemExit(3)

def double(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(144, num_classes)).double()

class Cosine(nn.Module):  # a cosine classifier: the class matrix a bare parameter, the last Linear a hidden layer
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, 32))
        self.weight = nn.Parameter(torch.randn(num_classes, 32))
    def forward(self, x):
        return 16 * nn.functional.normalize(self.body(x), dim=1) @ nn.functional.normalize(self.weight, dim=1).T

class Factorisation(nn.Module):  # matrix factorisation: lookup tables alone
    def __init__(self, num_classes=10):
        super().__init__()
        self.user, self.item = nn.Embedding(30, 8), nn.Embedding(50, 8)
    def forward(self, x):  # ids read off the input's first two values
        ids = x.flatten(1)[:, :2].long().clamp(0, 29)
        score = (self.user(ids[:, 0]) * self.item(ids[:, 1])).sum(dim=1)
        return torch.stack([score, -score], dim=1)  # like or not

instance = tiny()
NUMBER = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"fg_user_models_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "fg_bad_import.py").write_text("import fg_this_package_does_not_exist\n")
    (tmp_path / "fg_syntax_error.py").write_text("def broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in (name, "fg_bad_import", "fg_syntax_error"):
        sys.modules.pop(mod, None)


def test_module_callable_builds(user_module):
    model = build_model(f"{user_module}:tiny", num_classes=7)
    assert model(torch.rand(2, 1, 12, 12)).shape == (2, 7)
    assert resolve_input_shape(f"{user_module}:tiny") == (1, 12, 12)  # module attribute
    assert resolve_input_shape(f"{user_module}:tiny", "1,12,12") == (1, 12, 12)
    net = build_model(f"{user_module}:Net", num_classes=4, input_shape=(1, 12, 12))
    assert net.fc.out_features == 4
    shaped = build_model(f"{user_module}:shaped", num_classes=3, input_shape=(2, 5, 5))
    assert shaped(torch.rand(1, 2, 5, 5)).shape == (1, 3)
    assert build_model(f"{user_module}:shaped", num_classes=3)[1].in_features == 144  # the module's input_shape, passed
    assert build_model(f"{user_module}:fixed")[1].out_features == 5  # num_classes not passed
    assert build_model(f"{user_module}:fixed", num_classes=5)[1].out_features == 5  # the count it gives


def test_inspect_reads_no_class_count_off_a_hidden_layer_of_a_cosine_classifier(user_module, tmp_path):
    """The hidden Linear's 32 outputs had been taken for the class count: the model was then 'drifted' (FG701)."""
    from fedguard.inspect import inspect_model

    from fedguard.data import load_data

    x, y = load_data("digits", input_shape=(1, 12, 12))
    torch.manual_seed(0)
    for classes in (10, 5):
        torch.save(build_model(f"{user_module}:Cosine", num_classes=classes).state_dict(), tmp_path / "cosine.pt")
        own = (x[y < classes], y[y < classes])
        report = inspect_model(tmp_path / "cosine.pt", arch=f"{user_module}:Cosine", data=own)
        assert [f.rule_id for f in report.findings] == [], classes


def test_module_callable_that_cannot_take_the_class_count_asked_for(user_module):
    with pytest.raises(InputError, match=r"the model from .*:fixed gives 5 classes, not 7, and takes no num_classes "
                                         r"argument; use the class count it gives, or make the callable take num_classes$"):  # fmt: skip
        build_model(f"{user_module}:fixed", num_classes=7)


def test_module_callable_found_from_working_directory(tmp_path, monkeypatch):
    (tmp_path / "fg_cwd_models.py").write_text("from torch import nn\ndef make(num_classes):\n    return nn.Linear(4, num_classes)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert build_model("fg_cwd_models:make", 3).out_features == 3
        assert str(tmp_path) not in sys.path  # left as it was
    finally:
        sys.modules.pop("fg_cwd_models", None)


@pytest.mark.parametrize(
    "arch,match",
    [
        ("fg_no_such_module_xyz:make", r"cannot import module 'fg_no_such_module_xyz'.*folder that contains it"),
        ("fg_bad_import:make", r"importing module 'fg_bad_import'.*fg_this_package_does_not_exist"),
        ("fg_syntax_error:broken", r"importing module 'fg_syntax_error'.*SyntaxError.*fix the module"),
        ("{m}:missing", r"has no attribute 'missing'.*tiny.*fix the name"),
        ("{m}:broken", r"calling .*broken\(num_classes=10\) failed: ValueError: no weights for you"),
        ("{m}:not_a_model", r"returned an int, not a torch.nn.Module"),
        ("{m}:exits", r"calling .*exits\(num_classes=10\) failed: SystemExit: 3"),
        ("{m}:double", r"has float64 weights, but fedguard computes in float32; make the callable return model.float\(\)"),
        ("{m}:instance", r"model instance, not a callable"),
        ("{m}:NUMBER", r"not a callable"),
        (":tiny", r"package.module:callable"),
        ("{m}:", r"package.module:callable"),
        ("models/net.py:make", r"^arch takes a module name, not a file: for models/net.py write net:make, run from models "),
        ("net.py:make", r"for net.py write net:make, run from its folder or add that folder to PYTHONPATH$"),
        ("types:make", r"module 'types' is Python's own, imported instead of a file of that name, and has no 'make'; "
                       r"rename your module \(e.g. my_types.py\)$"),
    ],
)
def test_module_callable_errors(user_module, arch, match):
    with pytest.raises(InputError, match=match) as err:
        build_model(arch.format(m=user_module))
    assert "\n" not in str(err.value)


def test_module_callable_wrong_input_shape(user_module):
    with pytest.raises(InputError, match=r"cannot take input shape 3,32,32.*pass the input_shape"):
        build_model(f"{user_module}:tiny", 10, (3, 32, 32))


def test_module_callable_whose_forward_raises_is_not_blamed_on_the_input_shape(tmp_path, monkeypatch):
    (tmp_path / "fg_raising.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Linear):\n"
        "    def forward(self, x):\n"
        "        raise KeyError('feature map')\n"
        "def make(num_classes=10, input_shape=(1, 8, 8)):\n"
        "    return Net(64, num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(InputError, match=r"the model from fg_raising:make raised KeyError: 'feature map' on two "
                                             r"all-zero inputs of shape 1,8,8; fix its forward$"):  # fmt: skip
            build_model("fg_raising:make", 10, (1, 8, 8))
    finally:
        sys.modules.pop("fg_raising", None)


def test_module_callable_with_batchnorm_that_keeps_no_running_statistics_builds(tmp_path, monkeypatch):
    """Such a BatchNorm standardises by the batch in eval mode too, and the dry run's one example had none: honest
    models were refused as raising in their forward."""
    (tmp_path / "fg_batch_stats.py").write_text(
        "from torch import nn\n"
        "def make(num_classes=10, input_shape=(1, 8, 8)):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32, track_running_stats=False),\n"
        "                         nn.ReLU(), nn.Linear(32, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert build_model("fg_batch_stats:make", 10, (1, 8, 8))[-1].out_features == 10
    finally:
        sys.modules.pop("fg_batch_stats", None)


def test_module_callable_without_default_shape(tmp_path, monkeypatch):
    (tmp_path / "fg_shapeless.py").write_text("from torch import nn\ndef make(num_classes):\n    return nn.Linear(4, num_classes)\n"
                                              "def fixed():\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(InputError, match="no default input shape; pass input_shape"):
            resolve_input_shape("fg_shapeless:make")
        assert build_model("fg_shapeless:make", 2).out_features == 2  # nothing to check against
        # a count the callable cannot take, with no shape to see what it gives: inspect --arch had ignored it
        with pytest.raises(InputError, match=r"^num_classes 7 cannot be checked: fg_shapeless:fixed takes no num_classes "
                                             r"argument .* pass input_shape C,H,W, or drop num_classes$"):
            build_model("fg_shapeless:fixed", 7)
        assert build_model("fg_shapeless:fixed", 5, (1, 2, 2))[1].out_features == 5
    finally:
        sys.modules.pop("fg_shapeless", None)


def test_data_for_a_model_of_tokens_is_refused_as_such_not_asked_for_an_image_shape(tmp_path, monkeypatch):
    """inspect --data on a model that starts with an embedding had asked for --input-shape C,H,W; images are what
    --data takes, so the fix is to leave it out. A shapeless image model is still asked for its shape."""
    import torch

    from fedguard.inspect import inspect_model

    (tmp_path / "fg_tokens.py").write_text(
        "from torch import nn\n\nclass Tok(nn.Module):\n    def __init__(self, num_classes=4):\n        super().__init__()\n"
        "        self.emb = nn.Embedding(100, 16)\n        self.fc = nn.Linear(16, num_classes)\n\n"
        "    def forward(self, x):\n        return self.fc(self.emb(x).mean(1))\n\n"
        "def flat(num_classes=4):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        torch.save(build_model("fg_tokens:Tok").state_dict(), tmp_path / "tok.pt")
        with pytest.raises(InputError, match="starts with an embedding .* leave out data: the static and arch checks"):
            inspect_model(tmp_path / "tok.pt", arch="fg_tokens:Tok", data="digits")
        assert inspect_model(tmp_path / "tok.pt", arch="fg_tokens:Tok").verdict == "clean"
        torch.save(build_model("fg_tokens:flat").state_dict(), tmp_path / "flat.pt")
        with pytest.raises(InputError, match="no default input shape; pass input_shape C,H,W"):  # the API's names
            inspect_model(tmp_path / "flat.pt", arch="fg_tokens:flat", data="digits")
    finally:
        sys.modules.pop("fg_tokens", None)


def test_a_callables_own_input_shape_wins_over_its_modules(tmp_path, monkeypatch):
    from fedguard.architectures import resolve_input_shape

    (tmp_path / "shapes_module.py").write_text(
        "input_shape = (3, 32, 32)\n\ndef small():\n    pass\n\nsmall.input_shape = (1, 8, 8)\n\ndef plain():\n    pass\n"
        "\ndef argued(num_classes=10, input_shape=(1, 12, 12)):\n    pass\n"
        "\ndef unset(num_classes=10, input_shape=None):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_input_shape("shapes_module:small") == (1, 8, 8)
    assert resolve_input_shape("shapes_module:plain") == (3, 32, 32)
    assert resolve_input_shape("shapes_module:argued") == (1, 12, 12)  # the shape it builds when called without one
    assert resolve_input_shape("shapes_module:unset") == (3, 32, 32)


def test_a_callables_input_shape_argument_is_its_default_shape(tmp_path, monkeypatch):
    """A builder written ``def build(num_classes=10, input_shape=(1, 8, 8))`` had been asked for --input-shape."""
    (tmp_path / "fg_argued.py").write_text(
        "from torch import nn\n\ndef build(num_classes=10, input_shape=(1, 8, 8)):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))\n"
        "\ndef odd(input_shape=(8, 8)):\n    return nn.Linear(64, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert resolve_input_shape("fg_argued:build") == (1, 8, 8)
        assert build_model("fg_argued:build", 3)[1].in_features == 64
        assert build_model("fg_argued:build", 3, (3, 4, 4))[1].in_features == 48  # given, it wins
        with pytest.raises(InputError, match=r"^fg_argued:odd declares input_shape=\(8, 8\), which is not C,H,W; fix it "
                                             r"or pass input_shape$"):  # the API's names
            resolve_input_shape("fg_argued:odd")
    finally:
        sys.modules.pop("fg_argued", None)


def test_a_model_of_lookup_tables_alone_says_to_leave_out_arch(user_module, tmp_path):
    """With --arch every matrix of a matrix factorisation is an nn.Embedding, which no check reads: the error names
    the tables and the way on (read without --arch, every matrix as a Linear layer), not 'pass the state_dict'."""
    from fedguard.inspect import inspect_model
    from fedguard.types import Verdict

    torch.save(build_model(f"{user_module}:Factorisation").state_dict(), tmp_path / "mf.pt")
    with pytest.raises(InputError, match=r"arch makes its matrices embedding tables \(user, item\), which no check "
                                         r"reads; leave out (--)?arch to read every matrix as a Linear layer$"):  # fmt: skip
        inspect_model(tmp_path / "mf.pt", arch=f"{user_module}:Factorisation")
    assert inspect_model(tmp_path / "mf.pt").verdict is Verdict.CLEAN


def test_the_readme_table_lists_every_built_in_architecture_as_registered():
    """README's table of ``--arch`` names is what the registry builds: name, default input shape, description."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `") and line.count(" | ") == 2]
    listed = {row.split(" | ")[0].strip("| `"): row for row in rows if row.split(" | ")[0].strip("| `") in ARCHITECTURES}
    assert list(listed) == ARCHITECTURES.names()
    for name, spec in ARCHITECTURES.items():
        assert listed[name] == f"| `{name}` | {','.join(map(str, spec.input_shape))} | {spec.description} |"


def test_an_architecture_passed_as_its_class_or_function_is_named_module_colon_name(tmp_path, monkeypatch):
    """From Python, ``arch=Net`` had been refused as a bad --arch; a class or function defined at a module's top level
    is named ``module:name`` (as the reports print it and build_model imports it back), others are refused."""
    import importlib

    from fedguard.architectures import arch_name
    from fedguard.inspect import inspect_model

    (tmp_path / "fg_classes.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self, num_classes=10, input_shape=(1, 8, 8)):\n"
        "        super().__init__()\n        self.fc = nn.Linear(64, num_classes)\n\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n\n"
        "def factory():\n    class Inner(Net):\n        pass\n    return Inner\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        mod = importlib.import_module("fg_classes")
        assert arch_name(mod.Net) == "fg_classes:Net" and arch_name("lenet") == "lenet" and arch_name(None) is None
        assert build_model(mod.Net, 3).fc.out_features == 3
        torch.save(mod.Net().state_dict(), tmp_path / "net.pt")
        report = inspect_model(tmp_path / "net.pt", arch=mod.Net)
        assert report.arch == "fg_classes:Net" and str(report.verdict) == "clean"
        for bad, said in ((mod.factory(), r"^arch 'factory.<locals>.Inner' is not found by its name in its module"),
                          (lambda num_classes=10: mod.Net(), r"^arch '.*<lambda>' is not found by its name"),
                          (mod.Net(), r"^arch is a model instance \(Net\); pass its class")):
            with pytest.raises(InputError, match=said):
                inspect_model(tmp_path / "net.pt", arch=bad)
    finally:
        sys.modules.pop("fg_classes", None)
