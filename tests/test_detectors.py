"""Every crafted attack in the zoo is caught; no benign model is flagged.

The zoo (tests/zoo.py) crafts each published attack on three or more
architectures with several constants, plus fp16 copies; the benign side has
several inits and seeds, trained, 50-90 % pruned, fp16, zero heads, LoRA
adapters and large normally-initialised MLPs.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from fedguard.detectors import DETECTORS, InspectContext, all_rules
from fedguard.detectors.linear_passes import layers_in_training, linear_layers_seen
from fedguard.errors import InputError
from fedguard.inspect import judge, run_detectors
from fedguard.modelview import ModelView
from fedguard.torch_state import evaluating_one_by_one, normalising_as_in_training
from fedguard.types import Confidence, Severity, Verdict
from tests.zoo import _train as train_with_adam
from tests.zoo import benign_entries, crafted_entries, digits

#: The rules that name each attack; a crafted model must raise at least one of its own.
EXPECTED = {
    "mkor": {"FG101", "FG102", "FG103"},
    "mkor_inconspicuous": {"FG104", "FG105"},
    "class_fishing": {"FG201"},
    "feature_fishing": {"FG201", "FG202"},
    "imprint": {"FG301"},
    "trap_weights": {"FG401"},
    "loki": {"FG301", "FG501", "FG502"},
    "oversized_fc": {"FG601"},
}


def static_findings(state_dict):
    findings, _ = run_detectors(InspectContext(view=ModelView.from_state_dict(state_dict)))
    return findings


@pytest.mark.parametrize("entry", crafted_entries(), ids=lambda e: e.label)
def test_crafted_model_is_caught_by_its_own_rule(entry):
    findings = static_findings(entry.state_dict)
    verdict = judge(findings)
    assert verdict is not Verdict.CLEAN
    assert EXPECTED[entry.kind] & {f.rule_id for f in findings}
    if entry.kind != "oversized_fc":  # shape alone cannot prove intent: suspicious, not malicious
        assert verdict is Verdict.MALICIOUS


@pytest.mark.parametrize("entry", benign_entries(), ids=lambda e: e.label)
def test_benign_model_is_clean(entry):
    findings = static_findings(entry.state_dict)
    assert judge(findings) is Verdict.CLEAN, [(f.rule_id, f.layer, f.message) for f in findings]
    assert not [f for f in findings if f.severity >= Severity.MEDIUM]


def test_every_detector_has_documented_rules():
    text = open("docs/detectors.md", encoding="utf-8").read()
    for rule_id, rule in all_rules().items():
        assert rule.help and rule.reference and rule.url.startswith("https://"), rule_id
        assert rule_id in text, f"{rule_id} missing from docs/detectors.md"
    assert len(DETECTORS) >= 10


def test_the_docs_table_of_detectors_names_each_ones_rules():
    """docs/detectors.md's table is where --detector's names meet the rule ids a report shows."""
    from fedguard.detectors import detector_of

    text = open("docs/detectors.md", encoding="utf-8").read()
    table = text.split("## Detectors and their rules", 1)[1].split("\n## ", 1)[0]
    from fedguard.detectors.base import NEED_FLAGS, NEEDS_DATA

    documented, needs = {}, {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if row.startswith("| `"):
            documented.update({rule_id.strip(): cells[0].strip("`") for rule_id in cells[1].split(",")})
            needs[cells[0].strip("`")] = {flag.strip(" `") for flag in cells[2].split(",") if flag.strip()}
    assert documented == detector_of()
    def flags(needs):  # the client's data runs through --arch: a detector that needs the one needs both
        return {NEED_FLAGS[need] for need in needs} | ({"--arch"} if NEEDS_DATA in needs else set())

    assert needs == {name: flags(detector.needs) for name, detector in DETECTORS.items()}


def _entry(entries, label):
    return next(e for e in entries if e.label == label)


def _with_data(module, input_shape, detectors=None, n=16):
    """Findings by rule of ``detectors`` (all by default) on ``module`` with ``n`` digits as the client's data."""
    x, y = digits(input_shape)
    context = InspectContext(view=ModelView.from_state_dict(module.state_dict(), module), data=(x[:n], y[:n]))
    findings, ran = run_detectors(context, detectors)
    assert detectors is None or ran == detectors
    return {f.rule_id: f for f in findings}


def _behavioural(entry, n=16):
    return _with_data(entry.module.float(), entry.input_shape, ["gradient_snr", "responses"], n)


def test_dsnr_flags_class_fishing_on_client_data():
    found = _behavioural(_entry(crafted_entries(), "class_fishing/lenet5/t0-b1000"))
    assert "FG801" in found
    assert found["FG801"].evidence["silent_tensor_share"] >= 0.5


def test_dsnr_flags_a_single_isolated_sample():
    found = _behavioural(_entry(crafted_entries(), "class_fishing/lenet/t9-b100"))
    assert found["FG801"].evidence["dsnr"] >= 2  # digit 9 occurs once in the first 16 samples


def test_transmit_snr_flags_mkor_pass_through_first_layer():
    found = _behavioural(_entry(crafted_entries(), "mkor/lenet5/paper"))
    assert "FG802" in found
    assert found["FG802"].evidence["fraction"] >= 0.25


@pytest.mark.parametrize("label", ["trained/lenet5/3ep", "trained/convnet/2ep", "trained/mlp/3ep", "init/resnet18/seed0",
                                   "init/mlp/seed0", "init/mlp/seed1", "init/lenet5/seed1", "reinit/mlp/kaiming_normal",
                                   "pruned/mlp/trained-90pct", "fp16/lenet5/trained", "fp16rt/lenet5/init",
                                   "fp16/mlp/trained", "fp16/vgg11/init", "fp16/mobilenet_v3_small/init"])
def test_behavioural_checks_quiet_on_benign_models(label):
    entry = _entry(benign_entries(), label)
    module = copy.deepcopy(entry.module).float()  # an fp16 entry's module is the float32 model it was cast from:
    module.load_state_dict({k: v.float() for k, v in entry.state_dict.items()})  # the weights it was sent with
    assert _with_data(module, entry.input_shape, ["gradient_snr", "responses", "silenced"], 64) == {}


def test_feature_fishing_that_keeps_the_row_is_fg202():
    """The target row keeps its other weights: the one feature scaled x1000 stands out of them (FG202), beside FG201."""
    rules = _rules_of(_entry(crafted_entries(), "feature_fishing/mlp/x1000-keeprow").state_dict)
    assert "FG202" in rules and rules["FG202"].evidence["ratio_to_row_rms"] >= 50 and "FG201" in rules


def _honest_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def test_biases_at_a_high_quantile_of_each_units_response_are_sparse_firing():
    """Honest weights, each bias at the 63/64 quantile of its unit's response on public digits: 40-44 of 64 digits
    rebuilt exactly (honest: 3-9) and every static rule had called it clean."""
    model = _honest_mlp()
    public = digits((1, 8, 8))[0][1::2][:512]
    with torch.no_grad():
        response = public.flatten(1) @ model[1].weight.T
        model[1].bias.copy_(-torch.quantile(response, 1 - 1 / 64, dim=0))
    assert judge(static_findings(model.state_dict())) is Verdict.CLEAN
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG803"].evidence["rare_share"] >= 0.9


class _WrittenLeaky(nn.Module):
    """A leaky ReLU written out, which autograd does not name as one."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        return torch.where(x > 0, x, self.slope * x)


def _quantile_biases_behind(activation: nn.Module, norm: nn.Module | None = None) -> tuple[nn.Module, nn.Module]:
    """An honest MLP with ``activation`` (after ``norm``) and its twin with quantile biases (FG803's attack)."""
    torch.manual_seed(0)
    honest = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), *([norm] if norm else []), activation,
                           nn.Linear(256, 10)).eval()  # fmt: skip
    planted = copy.deepcopy(honest)
    _sparse_firing(planted[1], digits((1, 8, 8))[0][1::2][:512].flatten(1))
    return honest, planted


@pytest.mark.parametrize("slope", [0.0, 1e-9, 1e-4])
def test_units_whose_gradient_below_the_bias_is_negligible_but_not_zero_are_sparse_firing(slope):
    """A red team's leaky activation of slope 1e-9 behind quantile biases: every example's gradient reaches every
    unit, none exactly zero, and the layer gave back as many examples as with a ReLU, clean. Written out, as here,
    autograd does not name it leaky (torch's own are read by where they switch on, below); its units that no example
    of the batch sets off are reached by all alike (they give the server an average), so the share is lower than the
    ReLU's, whose such units are dead."""
    honest, planted = _quantile_biases_behind(_WrittenLeaky(slope))
    assert not _with_data(honest, (1, 8, 8), ["responses"], n=64)
    found = _with_data(planted, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.evidence["rare_units"] >= 140
    assert found.evidence["rare_share"] >= (0.9 if slope == 0 else 0.5) and found.evidence["isolated_examples"] >= 32


@pytest.mark.parametrize("activation, norm", [
    (lambda: nn.LeakyReLU(), None), (lambda: nn.LeakyReLU(0.2, inplace=True), None), (lambda: nn.PReLU(), None),
    (lambda: nn.PReLU(256), None), (lambda: nn.RReLU(), None), (lambda: nn.ReLU(inplace=True), None),
    (lambda: nn.ReLU6(inplace=True), None), (lambda: nn.LeakyReLU(0.01), lambda: nn.BatchNorm1d(256)),
], ids=["leaky", "leaky-0.2-inplace", "prelu", "prelu-per-unit", "rrelu", "relu-inplace", "relu6-inplace", "bn-leaky"])
def test_quantile_biases_behind_torchs_leaky_and_in_place_activations_are_sparse_firing(activation, norm):
    """Behind a leaky activation of PyTorch's default slope 0.01 or 0.002 a third red team fitted the rows below zero
    out of each unit's gradient through the next layer's columns and rebuilt 34 of 64 digits, clean; behind an
    activation in place (torchvision's VGG and AlexNet classifiers) the layer's output gradient had been the
    activation's, without zeros, and a ReLU's quantile biases read clean. Honest twins: clean."""
    honest, planted = _quantile_biases_behind(activation(), norm and norm())
    assert not _with_data(honest, (1, 8, 8), ["responses"], n=64)
    found = _with_data(planted, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.evidence["rare_share"] >= 0.9
    assert found.evidence["isolated_examples"] >= 32


@pytest.mark.parametrize("after", ["wide-layer-always-on", "layernorm"])
def test_a_leaky_slope_is_read_as_switched_off_whatever_reads_the_activation(after):
    """A second red team's plantings behind a LeakyReLU whose output goes on to a full-rank layer of 256 units that
    every example switches on (its gradient is then the head's 10 directions through known weights: 52 of 64 digits
    rebuilt, 47 exactly) or to a LayerNorm (53 of 64): the slope's term is one the server fits away wherever the
    path to the loss keeps it in few known directions, which the weights the activation's output meets first do not
    tell (a rule reading their rank had read both clean)."""
    torch.manual_seed(0)
    rest = ([nn.Linear(256, 256), nn.LeakyReLU()] if after == "wide-layer-always-on" else [nn.LayerNorm(256)])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.LeakyReLU(), *rest, nn.Linear(256, 10)).eval()
    assert not _with_data(model, (1, 8, 8), ["responses"], n=64)
    public = digits((1, 8, 8))[0][1::2][:512].flatten(1)
    _sparse_firing(model[1], public)
    with torch.no_grad():
        if after == "wide-layer-always-on":
            response = model[3](model[2](model[1](public)))
            model[3].bias.sub_(response.min(dim=0).values - response.std(dim=0))
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "1" and found.evidence["rare_share"] >= 0.9


class _Between(nn.Module):
    """``Linear(64, 256)``, then ``how`` the layer's output meets its activation, then the head."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.l1, self.head = how, nn.Linear(64, 256), nn.Linear(256, 10)
        self.norm = nn.BatchNorm1d(256)

    def forward(self, x):
        h = self.l1(x.flatten(1))
        if self.how == "in-place-then-batchnorm":  # the norm reads the activation's output, not the layer's
            return self.head(self.norm(nn.functional.leaky_relu(h, inplace=True)))
        if self.how == "reshaped":
            return self.head(nn.functional.leaky_relu(h.view(len(x), 16, 16)).flatten(1))
        if self.how == "normalised-elsewhere":  # a norm reads the output too, the activation reads it as it is
            return self.head(nn.functional.leaky_relu(h) + self.norm(h))
        # in place but for the three examples of the probe's pass
        return self.head(nn.functional.relu6(h, inplace=len(x) != 3))


@pytest.mark.parametrize("how", ["in-place-then-batchnorm", "reshaped", "normalised-elsewhere", "in-place-but-probe"])
def test_the_switch_is_read_whatever_sits_between_a_layer_and_its_activation(how):
    """A review's ways past the switched reading, quantile biases read clean each time: a BatchNorm after a LeakyReLU
    in place (it got the same tensor, rewritten, and was taken for a norm of the layer's output), a reshape between
    the layer and its LeakyReLU, a norm of the output that goes elsewhere while the LeakyReLU reads the output as it
    is, and an activation in place for every batch but the probe's. Honest twins: clean."""
    torch.manual_seed(0)
    honest = _Between(how).eval()
    assert not _with_data(honest, (1, 8, 8), ["responses"], n=64)
    planted = copy.deepcopy(honest)
    _sparse_firing(planted.l1, digits((1, 8, 8))[0][1::2][:512].flatten(1))
    found = _with_data(planted, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "l1" and found.evidence["rare_share"] >= 0.9


class _PreActivationBlock(nn.Module):
    """``h + fc(relu(h))``: the layer before it reaches the head by the skip and by the ReLU."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, h):
        return h + self.fc(torch.relu(h))


@pytest.mark.parametrize("between", ["layernorm", "skip"])
def test_quantile_biases_whose_rows_switched_off_reach_the_units_through_weights_the_server_wrote(between):
    """A red team's quantile shifts in a LayerNorm between a Linear layer and its ReLU (50 of 64 digits rebuilt) and
    quantile biases in the layer before a pre-activation residual block (52 of 64): the LayerNorm's mixing of the
    row, or the skip to the head, gives every example a gradient at every unit, a term the server fits away through
    weights it wrote, and the layers had read clean. A row now reaches a unit a ReLU reads only where it switches it
    on. Honest twins: clean."""
    torch.manual_seed(0)
    middle = [nn.LayerNorm(256), nn.ReLU()] if between == "layernorm" else [_PreActivationBlock(256)]
    honest = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), *middle, nn.Linear(256, 10)).eval()
    assert not _with_data(honest, (1, 8, 8), ["responses"], n=64)
    planted, public = copy.deepcopy(honest), digits((1, 8, 8))[0][1::2][:512].flatten(1)
    with torch.no_grad():
        response = planted[1](public)
        shifted = planted[2] if between == "layernorm" else planted[1]
        response = planted[2](response) if between == "layernorm" else response
        shifted.bias.sub_(torch.quantile(response, 1 - 1 / 64, dim=0))
    found = _with_data(planted, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "1" and found.evidence["rare_share"] >= 0.9
    assert found.evidence["isolated_examples"] >= 32


def _sparse_firing(layer: torch.nn.Linear, inputs: torch.Tensor, share: float = 1.0, batch: int = 64) -> None:
    """Set ``share`` of ``layer``'s units' biases at the ``1 - 1/batch`` quantile of their response to ``inputs``
    (public digits): each fires for about one example of a batch of ``batch``."""
    with torch.no_grad():
        planted = torch.randperm(layer.out_features, generator=torch.Generator().manual_seed(0))
        planted = planted[: round(share * layer.out_features)]
        response = inputs @ layer.weight[planted].T
        layer.bias[planted] = -torch.quantile(response, 1 - 1 / batch, dim=0)


def test_behavioural_checks_run_on_a_model_saved_with_its_pruning_masks(tmp_path):
    """Quantile biases (FG803's attack, which only the behavioural checks read) in a model saved as torch's pruning
    leaves it, ``weight_orig`` beside ``weight_mask``: the weights had not loaded into --arch as stored, so no
    behavioural check ran and the model read clean. They go in as the weights the layers compute with."""
    from fedguard.architectures import build_model
    from fedguard.inspect import inspect_model

    torch.manual_seed(0)
    model = build_model("mlp")
    prune.l1_unstructured(model[1], "weight", 0.3)
    _sparse_firing(model[1], digits((1, 28, 28))[0][1::2].flatten(1))
    assert {"1.weight_orig", "1.weight_mask"} <= set(model.state_dict())
    torch.save(model.state_dict(), tmp_path / "masked.pt")
    report = inspect_model(tmp_path / "masked.pt", arch="mlp", data="digits")
    assert report.config["data_examples"] == 64 and "FG803" in {f.rule_id for f in report.findings}


@pytest.mark.parametrize("batch", [8, 10])
def test_sparse_firing_set_for_the_clients_batch_size(batch):
    """QBI (an independent review): biases alone set so that each unit fires for one example of a batch of 8-10, not
    of the 64 the check reads: 94-95 % of a batch of 16 rebuilt against 61 % for the honest MLP, and clean while a
    rare unit was one at most 1/16 of the examples reach."""
    model = _honest_mlp()
    _sparse_firing(model[1], digits((1, 8, 8))[0][1::2][:512].flatten(1), batch=batch)
    assert judge(static_findings(model.state_dict())) is Verdict.CLEAN
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG803"].evidence["rare_share"] >= 0.5 and found["FG803"].severity is Severity.HIGH


@pytest.mark.parametrize("alive", [8, 256])
def test_sparse_firing_behind_a_layer_that_died_is_medium(alive):
    """FedAdam at tau 1e-9 (an honest federated sweep) leaves an MLP's first layer 8-10 units alive; its second layer
    then reads 8-10 directions and some of its units fire rarely (0.34-0.70). An example a unit isolates there gives
    that many numbers, not the example: medium. The same second layer behind a live first layer: high."""
    from fedguard.architectures import build_model

    torch.manual_seed(0)
    model = build_model("mlp")
    x = digits((1, 28, 28))[0][1::2][:512]
    with torch.no_grad():
        model[1].weight[alive:] = -model[1].weight[alive:].abs()  # pixels are >= 0: these never fire
        model[1].bias[alive:] = -0.3
        _sparse_firing(model[3], model[2](model[1](x.flatten(1))), batch=10)
    found = _with_data(model, (1, 28, 28), ["responses"], n=64)["FG803"]
    assert found.layer == "3" and found.evidence["rare_share"] >= 0.5
    if alive < 16:
        assert found.severity is Severity.MEDIUM and found.evidence["input_directions"] <= alive
    else:
        assert found.severity is Severity.HIGH and found.evidence["input_directions"] >= 32


def test_input_directions_count_the_features_a_layer_reads_each_at_its_own_scale():
    """A red team made one input feature 1e15 times the others through a BatchNorm's gain, its weights zero: the
    rank's tolerance, relative to the largest singular value, read one direction where 52 were, and FG803's quantile
    biases (35-39 of 64 digits rebuilt) read medium. Features count at unit spread, and only those the layer reads;
    features of no spread (units that died before the layer) count none."""
    from fedguard.detectors.linear_passes import LinearSeen, input_directions

    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(41, 8)
    inputs = torch.randn(64, 41, generator=gen, dtype=torch.float64)
    inputs[:, 0] *= 1e15
    with torch.no_grad():
        layer.weight[:, 0] = 0
    seen = LinearSeen("0", layer, inputs, torch.zeros(64, 8, dtype=torch.float64), torch.zeros(64, 8, dtype=torch.float64))
    assert input_directions(seen) == 40
    inputs[:, 9:] = 0.5  # 8 features vary, the rest are constant
    assert input_directions(seen) == 8


def test_sparse_firing_that_isolates_no_more_than_a_fresh_initialisation_is_medium(monkeypatch):
    """Honest federated runs whose units were dying (FedAdam's first rounds, Adam clients that killed most of a layer)
    read rare shares of 0.39-0.68 while isolating 2-5 of 64 examples, fewer than a fresh MLP does (7): medium, the
    leak the architecture's. Quantile biases isolate far more than the fresh model: high."""
    from fedguard.architectures import build_model
    from fedguard.detectors import responses

    torch.manual_seed(0)
    model = build_model("mlp")
    _sparse_firing(model[1], digits((1, 28, 28))[0][1::2][:512].flatten(1), batch=10)
    x, y = digits((1, 28, 28))
    context = InspectContext(view=ModelView.from_state_dict(model.state_dict(), model), data=(x[:64], y[:64]),
                             fresh=lambda: build_model("mlp"))  # fmt: skip

    def fg803():
        return {f.rule_id: f for f in run_detectors(context, ["responses"])[0]}["FG803"]

    found = fg803()
    evidence = found.evidence
    assert found.severity is Severity.HIGH and evidence["isolated_examples"] > evidence["fresh_init_isolated"]
    monkeypatch.setattr(responses, "_fresh_isolated", lambda *args: found.evidence["isolated_examples"])
    assert fg803().severity is Severity.MEDIUM and "fresh initialisation" in fg803().message
    monkeypatch.setattr(responses, "_fresh_isolated", lambda *args: found.evidence["isolated_examples"] - 1)
    assert fg803().severity is Severity.HIGH


def test_sparse_firing_in_half_a_layer_among_honest_units():
    """An adaptive server plants just under half the units among honest ones, which fire for about half the examples:
    the share of rare units had been compared with 50 %, passed at 48 %, and 35 of 64 digits were rebuilt exactly
    (honest: 6)."""
    model = _honest_mlp()
    _sparse_firing(model[1], digits((1, 8, 8))[0][1::2][:512].flatten(1), share=0.49)
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    # 0.44-0.50 when a rare unit was one at most 1/16 of the examples reach, 0.50 at 1/8
    assert 0.35 <= found["FG803"].evidence["rare_share"] < 0.6 and found["FG803"].evidence["isolated_examples"] >= 24


def test_a_layer_dead_on_the_clients_data_is_model_inconsistency():
    """Pasquini et al. (CCS 2022): every first-layer unit below zero on any image, so the client's update is zero
    below the head and the aggregate is another client's alone; every rule had called it clean."""
    model = _honest_mlp()
    with torch.no_grad():
        model[1].weight.copy_(-model[1].weight.abs())  # pixels are >= 0: no unit ever fires
        model[1].bias.fill_(-0.3)
    assert judge(static_findings(model.state_dict())) is Verdict.CLEAN
    found = _with_data(model, (1, 8, 8), ["silenced"], n=64)
    finding = found["FG805"]
    assert (finding.severity, finding.layer, finding.evidence) == (Severity.MEDIUM, "2", {"examples": 64, "head": "3"})
    with torch.no_grad():  # one unit alive for every example: the examples stay apart, 255 rows of the update zero
        model[1].bias[0] = 10.0
    silent = _with_data(model, (1, 8, 8), ["silenced"], n=64)["FG805"]
    assert (silent.title, silent.layer) == ("Layer silent on your data", "1")
    assert silent.evidence == {"dead_units": 255, "units": 256, "dead_share": 0.9961, "examples": 64}
    with torch.no_grad():  # half the units alive (honest layers: up to 54 % silent): not told from honest
        model[1].bias[:128] = 10.0
    assert _with_data(model, (1, 8, 8), ["silenced"], n=64) == {}


class _FunctionalNet(torch.nn.Module):
    """The functional style: ``F.relu`` in forward, no activation module; a learned temperature, a 0-d tensor."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 10)
        self.log_t, self.positive = torch.nn.Parameter(torch.tensor(0.5)), torch.nn.Softplus()

    def forward(self, x):
        return self.fc2(torch.nn.functional.relu(self.fc1(x.flatten(1)))) / self.positive(self.log_t)


def test_a_layer_dead_behind_a_functional_relu_is_named_and_scalars_are_no_batch():
    """From a review: a scalar through a module (a learned temperature) had raised (len() of a 0-d tensor), and a
    layer dead behind F.relu right before the head had gone unseen."""
    torch.manual_seed(0)
    model = _FunctionalNet()
    assert _with_data(model, (1, 8, 8), ["silenced"], n=16) == {}
    with torch.no_grad():
        model.fc1.weight.copy_(-model.fc1.weight.abs())
        model.fc1.bias.fill_(-0.3)
    assert _with_data(model, (1, 8, 8), ["silenced"], n=16)["FG805"].layer == "fc1"


def test_a_zero_head_and_zero_residual_branches_keep_the_examples_apart():
    """A head initialised at zero gives every example the same logits, ResNet's zero-initialised residual branches
    the same branch output; neither discards the data (only the head's input counts)."""
    from fedguard.architectures import build_model

    model = _honest_mlp()
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].bias.zero_()
    assert _with_data(model, (1, 8, 8), ["silenced"], n=16) == {}
    hidden = torch.nn.Sequential(*_honest_mlp(), torch.nn.ReLU(), torch.nn.Linear(10, 10))
    with torch.no_grad():  # a hidden layer at zero gives every example its bias, yet trains: its gradient is not zero
        hidden[3].weight.zero_()
    assert _with_data(hidden, (1, 8, 8), ["silenced"], n=16) == {}
    torch.manual_seed(0)
    resnet = build_model("resnet18")
    for name, norm in resnet.named_modules():
        if name.endswith("bn2"):
            torch.nn.init.zeros_(norm.weight)
    assert _with_data(resnet, (3, 32, 32), ["silenced"], n=16) == {}


def _two_hidden_layers() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))  # fmt: skip


def test_sparse_firing_in_a_second_layer():
    """Every unit of the second Linear fires for about one example: each hands the server that example's first-layer
    features, from which it solves for the image (43 of 64 digits at >= 30 dB); only the first layer had been read."""
    model = _two_hidden_layers()
    with torch.no_grad():
        features = model[2](model[1](digits((1, 8, 8))[0][1::2][:512].flatten(1)))
    _sparse_firing(model[3], features)
    assert judge(static_findings(model.state_dict())) is Verdict.CLEAN
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG803"].layer == "3" and found["FG803"].evidence["rare_share"] >= 0.9


def test_imprint_in_a_second_layer_with_dissimilar_rows():
    """Robbing the Fed's bins moved to the second Linear, each row the brightness measurement through the first
    layer plus three times its norm in directions the first layer never produces (|cosine| between rows 0.45 at
    most): one measurement on the data (31 of 64 digits rebuilt at >= 30 dB), nothing in weight space."""
    model = _two_hidden_layers()
    public = digits((1, 8, 8))[0][1::2][:512].flatten(1)
    with torch.no_grad():
        first = model[1].weight
        model[1].bias.copy_(-(public @ first.T).min(dim=0).values + 0.05)  # on for every digit: affine, rank 64
        through = first @ torch.linalg.solve(first.T @ first, torch.full((64,), 1 / 64))  # brightness through layer 1
        unseen = torch.eye(256) - first @ torch.linalg.solve(first.T @ first, first.T)
        noise = torch.randn(128, 256) @ unseen
        rows = through + 3 * through.norm() * noise / noise.norm(dim=1, keepdim=True)
        model[3].weight[:128] = rows
        model[3].bias[:128] = -torch.quantile(public.mean(dim=1), (torch.arange(128) + 0.5) / 128) - rows @ model[1].bias
    assert judge(static_findings(model.state_dict())) is Verdict.CLEAN
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].layer == "3" and found["FG804"].evidence["units"] >= 100


def test_fg804_is_high_for_an_exact_measurement_and_medium_for_units_only_aligned():
    """Robbing the Fed's bins measure one quantity exactly (1 - |r| 0 here; 1e-16 to 1e-10 in every crafted imprint);
    honest training on two classes aligns a hidden layer's units to 1 - |r| of 3e-4 to 5e-4 (every MLP trained 3 epochs
    on two digit classes had been FG804 high, malicious). Rows alike to 3e-4 still bin: medium, with the departure."""
    from fedguard.detectors.responses import EXACT_RESPONSE

    public = digits((1, 8, 8))[0][1::2][:512].flatten(1)
    severities = {}
    for sigma in (0.0, 3e-4):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        with torch.no_grad():
            model[1].weight.copy_(1 / 64 + sigma * torch.randn(128, 64, generator=torch.Generator().manual_seed(1)))
            model[1].bias.copy_(-torch.quantile(public.mean(dim=1), (torch.arange(128) + 0.5) / 128))
        found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG804"]
        severities[sigma] = (found.severity, found.confidence, found.evidence["departure"] > EXACT_RESPONSE)
        assert found.layer == "1" and found.evidence["units"] == 128
    assert severities == {0.0: (Severity.HIGH, Confidence.HIGH, False), 3e-4: (Severity.MEDIUM, Confidence.MEDIUM, True)}


def test_an_imprint_behind_weights_that_cancel_exactly_is_still_one_measurement():
    """An independent review's evasion of a rounding floor set against ``eps Σ_k |W_ik x_nk|``: 64 first-layer units
    constant (zero rows, biases on a power-of-two grid, in equal pairs), and second-layer bins weighting each pair
    +r and -r (exactly 0 in float32 as in float64) beside a measurement 1e-9 as large on the data's features. The
    pairs inflated the bound, the bins fell under it, and 13 of 16 digits came back exactly, clean. The floor is now
    each feature's own float32 rounding error, measured against a float64 forward pass."""
    model = _two_hidden_layers()
    public = digits((1, 8, 8))[0][1::2][:512].flatten(1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model[1].weight[:64] = 0
        model[1].bias[:64] = (torch.randint(1, 5, (32,), generator=generator) / 4).repeat(2)
        reading = torch.rand(192, generator=generator) + 0.5
        measured = torch.relu(model[1](public))[:, 64:] @ reading
        cancel = torch.randint(1, 17, (128, 32), generator=generator) / 256
        model[3].weight[:128] = torch.cat([cancel, -cancel, 1e-9 * reading.expand(128, -1)], dim=1)
        model[3].bias[:128] = -1e-9 * torch.quantile(measured, torch.linspace(0.05, 0.95, 128))
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].layer == "3" and found["FG804"].evidence["units"] >= 100


def test_an_imprint_whose_input_float64_computes_otherwise_is_still_reported():
    """A diff review's evasion of the float64 pass: the model carries the pixels through identity rows, computes
    1e8 + 12 - 1e8 beside them (16 in float32, 12 in float64) and adds 100 times its excess over 16 to every pixel
    feature, so that the imprint's input is the pixels plus 10 in float32 and switched off by the ReLU in float64.
    Read as float32's rounding error, that difference had hidden the imprint; the two passes part far beyond rounding,
    so the float64 one is not trusted."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 80),
                          nn.ReLU(), nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 10))  # fmt: skip
    carry, add, cancel, shift, imprint = model[1], model[3], model[5], model[7], model[9]
    with torch.no_grad():
        for layer in (carry, add, cancel, shift):
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[:64, :64] = torch.eye(64)
        carry.bias[64], carry.bias[65] = 1e8, 12.0
        add.weight[64, 64] = add.weight[64, 65] = 1
        cancel.weight[64, 64], cancel.bias[64] = 1, -1e8
        shift.weight[:64, 64], shift.bias[:64] = 100, -16 * 100 + 10
        measured = digits((1, 8, 8))[0][1::2][:512].flatten(1).sum(dim=1) / 8 + 80
        imprint.weight[:32] = 0
        imprint.weight[:32, :64] = 1 / 8
        imprint.bias[:32] = -torch.quantile(measured, torch.linspace(0.05, 0.95, 32))
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].layer == "9" and found["FG804"].evidence["units"] == 32


def test_an_imprint_in_a_model_that_runs_in_float32_only_is_still_reported():
    """A model whose code casts its input to float32 cannot run in float64, so its rounding error cannot be measured:
    every feature counts as varying, as before the floor."""

    class Float32Only(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _honest_mlp()

        def forward(self, x):
            return self.net(x.float())

    model = Float32Only()
    with torch.no_grad():
        model.net[1].weight[:32] = 1 / 8
        model.net[1].bias[:32] = -torch.linspace(0.5, 4.0, 32)
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].evidence["units"] == 32


def test_thresholds_count_where_units_switch_among_the_examples():
    """A unit's threshold is where it switches on the data: bins set through a constant first-layer feature with no
    bias are one measurement with 32 thresholds, 27 distinct cuts of the 64 examples (a diff review: they had read as
    one threshold, clean), and eight alike units that stay on for every example cut nothing (they had been
    reported)."""
    model = _two_hidden_layers()
    measured = digits((1, 8, 8))[0][1::2][:512].flatten(1).sum(dim=1) / 8
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[:64, :64] = torch.eye(64)
        model[1].bias[64] = 1.0  # a feature that is 1 for every example
        model[3].weight[:32] = 0
        model[3].weight[:32, :64] = 1 / 8
        model[3].weight[:32, 64] = -torch.quantile(measured, torch.linspace(0.05, 0.95, 32))
        model[3].bias[:32] = 0
    assert _with_data(model, (1, 8, 8), ["responses"], n=64)["FG804"].evidence["thresholds"] >= 24  # 27 cuts of 64
    model = _honest_mlp()
    with torch.no_grad():
        model[1].weight[:8] = 1 / 8
        model[1].bias[:8] = torch.arange(1.0, 9.0)
    assert "FG804" not in _with_data(model, (1, 8, 8), ["responses"], n=64)


def test_many_small_imprints_are_read_together():
    """Robbing the Fed's bins in 36 groups of 7 units, each group one sparse measurement of 7 pixels with its biases at
    the public 1/8..7/8 quantiles: under FG301's 8 non-zeros and under the 8 units one group had to reach, clean,
    while an example alone in a bin of any group comes back exactly (an independent review: 98 % of a batch of 16
    rebuilt, the honest MLP 61 %). FG804 counts the units of every group of 4 or more with 4 or more thresholds."""
    model = _honest_mlp()
    public = digits((1, 8, 8))[0][1::2].flatten(1)
    torch.manual_seed(0)
    varied = public.var(dim=0).argsort(descending=True)[:40]
    with torch.no_grad():
        for group in range(36):
            row = torch.zeros(64).index_copy_(0, varied[torch.randperm(40)[:7]], torch.rand(7) * 0.1 + 0.05)
            units = slice(7 * group, 7 * group + 7)
            model[1].weight[units] = row
            model[1].bias[units] = -torch.quantile(public @ row, torch.arange(1, 8) / 8)
            model[3].weight[:, units] = model[3].weight[:, 7 * group, None]
    assert judge(static_findings(model.state_dict())) is Verdict.CLEAN
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG804"]
    assert found.severity is Severity.HIGH and found.evidence["groups"] >= 30 and found.evidence["largest_group"] == 7 and found.evidence["units"] >= 210


def _largest_raw_group(module: nn.Module, input_shape, name: str) -> int:
    """The most units of layer ``name`` whose raw responses to 64 digits correlate at FG804's |r| with one unit's."""
    from fedguard.attacks.fc_inversion import response_correlations
    from fedguard.detectors.responses import SAME_RESPONSE

    x, y = digits(input_shape)
    seen = next(s for s in linear_layers_seen(module, x[:64], y[:64]) if s.name == name)
    corr = response_correlations(seen.responses()[0])[0]
    return int((corr.abs() >= SAME_RESPONSE).sum(dim=1).max())


def test_units_that_vary_by_rounding_alone_are_not_one_measurement():
    """Honest models whose layer input the examples no longer move: LeNet-5 with sigmoids and every weight scaled by
    0.001, and MobileNetV3-Small trained five steps and then magnitude-pruned by 95 % per tensor. Their units'
    responses vary by float32's rounding alone (1e-8 of its scale and less), and that noise correlated across 53
    and some 650-700 units: FG804, high, malicious, on honest models."""
    from fedguard.architectures import build_model, resolve_input_shape

    torch.manual_seed(0)
    scaled = build_model("lenet5_sigmoid", 10, resolve_input_shape("lenet5_sigmoid"))
    with torch.no_grad():
        for parameter in scaled.parameters():
            parameter.mul_(1e-3)
    shape = resolve_input_shape("mobilenet_v3_small")
    torch.manual_seed(0)
    pruned = build_model("mobilenet_v3_small", 10, shape)
    x, y = digits(shape)
    optimiser = torch.optim.SGD(pruned.parameters(), lr=0.01)
    for step in range(5):
        optimiser.zero_grad()
        nn.functional.cross_entropy(pruned(x[32 * step : 32 * step + 32]), y[32 * step : 32 * step + 32]).backward()
        optimiser.step()
    for layer in pruned.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(layer, "weight", 0.95)
            prune.remove(layer, "weight")
    for model, input_shape, layer in ((scaled, (1, 28, 28), "classifier.2"), (pruned, shape, "classifier.0")):
        assert _largest_raw_group(model, input_shape, layer) >= 8  # the noise FG804 had read as one measurement
        assert "FG804" not in _with_data(model, input_shape, ["responses"], n=64)


def test_an_imprint_under_a_large_offset_is_still_one_measurement():
    """Robbing the Fed's brightness bins on digits that an earlier layer has shifted by 10 000: each response spans
    Σ|W x| of 80 000 and varies by 5e-5 of it, far above float32's resolution (1.2e-7), and the bins still split the
    batch. An offset that pushed the variation below float32's resolution would also leave the model itself unable to
    tell the examples' measurements apart."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(64))
        model[1].bias.fill_(1e4)
        model[3].weight[:32] = 1 / 8
        model[3].bias[:32] = -(1e4 * 8 + torch.linspace(0.5, 4.0, 32))
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].layer == "3" and found["FG804"].evidence["units"] == 32


@pytest.mark.parametrize("width", [1024, 4096])
def test_wide_honest_layers_are_not_sparse_firing(width):
    """An honest layer isolates more examples the wider it is (19-25 of 64 at 1024 units, 39-46 at 4096), but the
    share of its rarely reached units stays at 10-13.5 %: FG803 measures the share."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))
    assert _with_data(model, (1, 8, 8), ["responses"], n=64) == {}


def test_imprint_rows_that_differ_only_where_the_data_never_varies_are_one_measurement():
    """Brightness rows plus large noise on always-blank pixels: no group FG301 reads as one in weight space, the same
    bins on the data (such rows among 256 rebuilt 29-32 of 64 digits exactly)."""
    model = _honest_mlp()
    x = digits((1, 8, 8))[0].flatten(1)
    blank = (x.std(dim=0) == 0).nonzero()[:, 0]
    assert len(blank) >= 3
    torch.manual_seed(1)
    noise = torch.zeros(32, 64).index_copy_(1, blank, torch.randn(32, len(blank)))
    rows = 1 / 8 + 3 * noise / noise.norm(dim=1, keepdim=True)  # the noise 3x the measurement's norm
    with torch.no_grad():
        model[1].weight[:32] = rows
        model[1].bias[:32] = -torch.linspace(0.5, 4.0, 32)
    assert "FG301" not in _rules_of(model.state_dict())
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].evidence["units"] == 32 and found["FG804"].evidence["thresholds"] >= 4


def test_transmit_snr_quiet_on_a_layerwise_pruned_convnet():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 8 * 8, 10))  # fmt: skip
    for layer in (model[0], model[3]):  # 90 % of a 3x3 filter: one or two taps left, as copy filters have
        prune.l1_unstructured(layer, "weight", 0.9)
        prune.remove(layer, "weight")
    assert 1 in (model[0].weight != 0).flatten(1).sum(1).tolist()
    assert _with_data(model, (1, 8, 8)) == {}


class _TopOneExperts(torch.nn.Module):
    """A Switch-style mixture of experts: each sample goes through the one expert its router picks."""

    def __init__(self, experts: int = 4, hidden: int = 32):
        super().__init__()
        self.embed = torch.nn.Linear(64, hidden)
        self.router = torch.nn.Linear(hidden, experts)
        self.experts = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(hidden, 2 * hidden), torch.nn.ReLU(), torch.nn.Linear(2 * hidden, hidden))
            for _ in range(experts)
        )
        self.fc = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        h = torch.relu(self.embed(x.flatten(1)))
        gate = self.router(h).softmax(-1)
        top = gate.argmax(-1)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            chosen = top == e
            if chosen.any():
                out[chosen] = expert(h[chosen]) * gate[chosen, e : e + 1]
        return self.fc(h + out)


def test_a_mixture_of_experts_is_not_class_isolation():
    """Hard routing silences most samples in most experts' tensors, but no sample in all of them."""
    torch.manual_seed(0)
    assert "FG801" not in _with_data(_TopOneExperts(), (1, 8, 8), ["gradient_snr"])


def test_transmit_snr_skips_a_first_layer_of_one_input_per_unit():
    """A 1x1 stem on a one-channel image has T-SNR infinite by construction: it had been flagged, init or trained."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))  # fmt: skip
    assert "FG802" not in _with_data(model, (1, 8, 8))
    stem = torch.nn.Conv2d(1, 1, 1)  # a stem of weight 1 in front of an identity layer: the identity is scored
    identity = torch.nn.Linear(64, 64)
    with torch.no_grad():
        stem.weight.fill_(1.0), stem.bias.zero_(), identity.weight.copy_(torch.eye(64)), identity.bias.zero_()
    hidden = torch.nn.Sequential(stem, torch.nn.Flatten(), identity, torch.nn.ReLU(), torch.nn.Linear(64, 10))
    assert _with_data(hidden, (1, 8, 8))["FG802"].layer == "2"


def test_transmit_snr_on_an_identity_first_layer_is_suspicious_not_malicious():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    torch.nn.init.eye_(model[1].weight)
    found = _with_data(model, (1, 8, 8))
    assert found["FG802"].severity is Severity.MEDIUM  # blank border pixels: not every unit transmits
    assert judge(list(found.values())) is Verdict.SUSPICIOUS


def test_a_head_of_two_binary_tasks_trained_from_zero_is_not_opposite_pairs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    torch.nn.init.zeros_(model[3].weight)
    torch.nn.init.zeros_(model[3].bias)
    x, y = digits((1, 8, 8))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for start in range(0, 640, 64):
        out = model(x[start : start + 64])
        loss = torch.nn.functional.cross_entropy(out[:, :2], (y[start : start + 64] >= 5).long())
        loss = loss + torch.nn.functional.cross_entropy(out[:, 2:], (y[start : start + 64] % 2).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head = model[3].weight.detach()
    assert float(torch.cosine_similarity(head[0], head[1], 0)) < -0.9999  # the pattern FG104 looks for
    assert "FG104" not in {f.rule_id for f in static_findings(model.state_dict())}


def test_a_two_class_head_trained_from_a_random_start_is_not_opposite_pairs():
    """Every update of a two-class head moves its two rows apart by one vector, so training from a random start makes
    them opposite too (a ConvNet on two digit classes: FG104 suspicious); its rows feed no ReLU. A pair in a wider last
    layer that does not sum to zero is still read."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        apart = torch.randn(64)
        model[3].weight += torch.stack([apart, -apart]) * 50 * model[3].weight.norm(dim=1).max() / apart.norm()
    head = model[3].weight.detach()
    assert -0.9999 < float(torch.cosine_similarity(head[0], head[1], 0)) < -0.99 and float(head.sum(0).norm()) > 0.1
    assert "FG104" not in {f.rule_id for f in static_findings(model.state_dict())}
    wider = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    with torch.no_grad():
        wider[3].weight[:2] = head
        wider[3].weight[2] = torch.randn(64)
    assert "FG104" in {f.rule_id for f in static_findings(wider.state_dict())}

    class PairStoredLast(torch.nn.Module):  # run pair -> ReLU -> merge -> head, stored merge, head, pair
        def __init__(self):
            super().__init__()
            self.merge, self.head, self.pair = torch.nn.Linear(2, 32), torch.nn.Linear(32, 10), torch.nn.Linear(64, 2)

        def forward(self, x):
            return self.head(self.merge(torch.relu(self.pair(x.flatten(1)))))

    stored_last = PairStoredLast()
    with torch.no_grad():
        stored_last.pair.weight.copy_(head)
    assert list(stored_last.state_dict())[-1] == "pair.bias"
    assert "FG104" in {f.rule_id for f in static_findings(stored_last.state_dict())}  # a layer takes its two outputs


def test_dsnr_needs_two_examples():
    """A batch of one carries its whole gradient: D-SNR is infinite for any model, so there is nothing to flag."""
    assert _behavioural(_entry(benign_entries(), "trained/lenet5/3ep"), n=1) == {}


def test_run_detectors_leaves_the_callers_model_and_torch_state_and_checks_its_context():
    """From Python: the model stays in train mode (gradient_snr had left it in eval), the caller's no_grad and float64
    default dtype neither break the checks nor change; uint8 images and list labels are read as inspect reads them."""

    entry = _entry(crafted_entries(), "class_fishing/lenet5/t0-b1000")
    module = entry.module.float().train()
    x, y = digits(entry.input_shape)
    view = ModelView.from_state_dict(module.state_dict(), module)
    expected = {f.rule_id for f in run_detectors(InspectContext(view=view, data=(x[:16], y[:16])))[0]}
    assert "FG801" in expected and module.training
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            pixels = (x[:16] * 255).round().to(torch.uint8)
            found, ran = run_detectors(InspectContext(view=view, data=(pixels, y[:16].tolist())))
            assert torch.get_default_dtype() == torch.float64 and not torch.is_grad_enabled()
    finally:
        torch.set_default_dtype(torch.float32)
    assert {f.rule_id for f in found} == expected and "gradient_snr" in ran
    assert all(m.training for m in module.modules())
    frozen = module.features[1].eval()  # a caller's frozen layer in a training model: each submodule's mode back
    modes = [m.training for m in module.modules()]
    run_detectors(InspectContext(view=view, data=(x[:16], y[:16])))
    assert [m.training for m in module.modules()] == modes and not frozen.training
    with pytest.raises(InputError, match="context.view is a dict; pass ModelView.from_state_dict"):
        run_detectors(InspectContext(view=dict(module.state_dict())))
    with pytest.raises(InputError, match=r"--data has labels up to 19 but the model has 10 outputs; pass data whose labels are 0 to 9, the classes it"):
        run_detectors(InspectContext(view=view, data=(x[:4], torch.tensor([0, 1, 2, 19]))))
    single = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with pytest.raises(InputError, match=r"^--data: the model has a single output \(a binary classifier with a sigmoid\)"):
        run_detectors(InspectContext(view=ModelView.from_state_dict(single.state_dict(), single), data=(x[:16], y[:16] % 2)))


def test_gradient_snr_on_a_model_with_every_parameter_frozen_weighs_nothing():
    """Training such a model sends no update: the check had failed on torch's empty grad() call, blaming the
    architecture's code (exit 2)."""
    from fedguard.architectures import build_model

    module = build_model("lenet5", num_classes=10).requires_grad_(False)
    x, y = digits((1, 28, 28))
    view = ModelView.from_state_dict(module.state_dict(), module)
    findings, ran = run_detectors(InspectContext(view=view, data=(x[:16], y[:16])), ["gradient_snr"])
    assert findings == [] and ran == ["gradient_snr"]


def test_checks_from_several_threads_keep_the_callers_float64_default():
    """Each call sets float32 as torch's default dtype and puts the caller's back: run from four threads at once,
    they had restored one another's float32 mid-run (models built in float64, a dtype error) and left it behind."""
    from concurrent.futures import ThreadPoolExecutor

    entry = _entry(crafted_entries(), "class_fishing/lenet5/t0-b1000")
    x, y = digits(entry.input_shape)

    def check(_):
        module = entry.module.float()
        view = ModelView.from_state_dict(module.state_dict(), module)
        return sorted(f.rule_id for f in run_detectors(InspectContext(view=view, data=(x[:16], y[:16])))[0])

    alone = check(0)
    torch.set_default_dtype(torch.float64)
    try:
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(check, range(4)))
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert together == [alone] * 4


def test_reference_drift_trained_round_is_quiet_replaced_layer_is_not():
    base = _entry(benign_entries(), "init/lenet5/seed0").state_dict
    trained = _entry(benign_entries(), "trained/lenet5/3ep").state_dict
    context = InspectContext(view=ModelView.from_state_dict(trained), reference=ModelView.from_state_dict(base))
    assert run_detectors(context, ["reference_drift"])[0] == []

    replaced = dict(trained)
    replaced["classifier.0.weight"] = torch.randn_like(trained["classifier.0.weight"]) * 0.05
    context = InspectContext(view=ModelView.from_state_dict(replaced), reference=ModelView.from_state_dict(trained))
    findings, _ = run_detectors(context, ["reference_drift"])
    assert [(f.rule_id, f.layer, f.severity) for f in findings] == [("FG702", "classifier.0", Severity.HIGH)]


@pytest.mark.parametrize("factor", [4.0, 50.0])
def test_reference_drift_reports_a_layer_magnified_along_its_own_weights(factor):
    """Cosine 1 to last round's weights, so not "replaced"; honest rounds that keep a layer's direction change its
    norm by at most 15 % (the module docstring). FG502 had been the only finding at 50x, none at 4x."""
    trained = _entry(benign_entries(), "trained/lenet5/3ep").state_dict
    magnified = {**trained, "classifier.0.weight": factor * trained["classifier.0.weight"]}
    context = InspectContext(view=ModelView.from_state_dict(magnified), reference=ModelView.from_state_dict(trained))
    findings, _ = run_detectors(context, ["reference_drift"])
    assert [(f.rule_id, f.layer, f.severity, f.title) for f in findings] == [
        ("FG702", "classifier.0", Severity.HIGH, "Layer rescaled since the previous round")]
    assert findings[0].evidence["norm_growth"] == pytest.approx(factor, rel=1e-3)


def test_reference_drift_when_every_layer_moved_far_is_low():
    """Aggressive training moves every layer (the ConvNet's head to cosine 0.09): not a replaced layer among trained ones."""
    torch.manual_seed(0)
    base = _entry(benign_entries(), "init/lenet5/seed0").state_dict
    moved = {k: v + (8.0 if k == "classifier.0.weight" else 1.5) * v.std() * torch.randn_like(v) if v.ndim >= 2 else v
             for k, v in base.items()}  # fmt: skip
    context = InspectContext(view=ModelView.from_state_dict(moved), reference=ModelView.from_state_dict(base))
    findings, _ = run_detectors(context, ["reference_drift"])
    assert findings and {(f.rule_id, f.severity) for f in findings} == {("FG702", Severity.LOW)}
    assert judge(findings) is Verdict.CLEAN


def test_reference_drift_of_a_single_layer_model_is_low():
    """One epoch of logistic regression on digits moves its only layer to cosine 0.17: with no other layer to show
    that the round trained as usual, that is no replaced layer (it had been high, "the other layers kept cosine 1")."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = torch.tensor(digits.data / 16, dtype=torch.float32), torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for batch in torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split(32):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimiser.step()
    context = InspectContext(view=ModelView.from_state_dict(model.state_dict()), reference=ModelView.from_state_dict(before))
    findings, _ = run_detectors(context, ["reference_drift"])
    assert [(f.rule_id, f.severity) for f in findings] == [("FG702", Severity.LOW)]
    assert findings[0].evidence["cosine_to_previous"] < 0.2 and "others_median_cosine" not in findings[0].evidence
    assert judge(findings) is Verdict.CLEAN


def test_reference_drift_reports_inserted_block():
    imprint = _entry(crafted_entries(), "imprint/lenet5/avg-k128-data").state_dict
    base = _entry(benign_entries(), "init/lenet5/seed0").state_dict
    context = InspectContext(view=ModelView.from_state_dict(imprint), reference=ModelView.from_state_dict(base))
    findings, _ = run_detectors(context, ["reference_drift"])
    assert findings and findings[0].rule_id == "FG702"
    assert findings[0].evidence["unexpected"]


def test_nan_weights_are_a_finding_and_do_not_hide_the_rest_of_the_layer():
    """NaN/Inf are FG002 on an honest model, and read as 0 by the other checks: a crafted layer stays caught."""
    sd = {k: v.clone() for k, v in _entry(benign_entries(), "trained/mlp/3ep").state_dict.items()}
    first = next(k for k in sd if k.endswith("weight"))
    sd[first][0, 0] = float("nan")
    sd[first][1, 1] = float("inf")
    findings = static_findings(sd)
    assert [(f.rule_id, f.evidence["nan"], f.evidence["inf"]) for f in findings] == [("FG002", 1, 1)]
    assert judge(findings) is Verdict.SUSPICIOUS
    for kind in ("class_fishing", "trap_weights"):
        entry = next(e for e in crafted_entries() if e.kind == kind)
        sd = {k: v.clone() for k, v in entry.state_dict.items()}
        last = [k for k in sd if k.endswith("weight") and sd[k].ndim >= 2][-1 if kind == "class_fishing" else 0]
        sd[last].view(-1)[0] = float("nan")
        findings = static_findings(sd)
        assert {"FG002"} | EXPECTED[kind] <= {f.rule_id for f in findings} and judge(findings) is Verdict.MALICIOUS, kind


def test_fg502_says_when_a_bias_it_read_as_zero_was_nan():
    """A bias of NaNs only beside a huge weight: FG502's evidence had said max_abs_bias=0 and nothing more."""
    sd = {k: v.clone() for k, v in _entry(benign_entries(), "trained/mlp/3ep").state_dict.items()}
    bias = next(k for k in sd if k.endswith("bias"))
    sd[bias].fill_(float("nan"))
    sd[bias.replace("bias", "weight")][0, 0] = 1e6
    fg502 = [f for f in static_findings(sd) if f.rule_id == "FG502"]
    assert len(fg502) == 1 and fg502[0].evidence["bias_non_finite"] == "NaN or inf, read as 0 (FG002)"
    assert f"({fg502[0].evidence['z']:.4g}× the 1/sqrt(fan_in) init scale)" in fg502[0].message  # as the evidence writes it


@pytest.mark.parametrize("how", ["all x 1e37", "head at 3e38", "head at -3e38", "float64 x 1e300", "bf16 x 1e36"])
def test_huge_finite_weights_are_fg502_not_a_crash(how):
    """Finite weights whose squares overflow float32 (a server's 1e37, or float64's 1e300) had crashed the fishing
    check (every row's norm infinite, so every row "muted") and the Gaussian-fill test (OverflowError)."""
    sd = {k: v.clone() for k, v in _entry(benign_entries(), "trained/lenet5/3ep").state_dict.items()}
    head = [k for k in sd if k.endswith("weight")][-1]
    if how.startswith("head"):
        sd[head].fill_(float(how.split()[-1]))
    else:
        dtype, factor = {"all": (torch.float32, 1e37), "float64": (torch.float64, 1e300), "bf16": (torch.bfloat16, 1e36)}[how.split()[0]]
        sd = {k: v.to(dtype) * factor if v.is_floating_point() else v for k, v in sd.items()}
    findings = static_findings(sd)
    fg502 = [f for f in findings if f.rule_id == "FG502"]
    assert fg502 and judge(findings) is Verdict.MALICIOUS and "FG002" not in {f.rule_id for f in findings}
    assert all(math.isfinite(f.evidence["max_abs_weight"]) and math.isfinite(f.evidence["max_abs_bias"]) for f in fg502)


def test_reference_drift_of_huge_weights_has_finite_figures():
    """Against a last round of 3e38 weights FG702 had read "moved by nan% of their norm" (norms overflowed)."""
    base = {k: v.clone() for k, v in _entry(benign_entries(), "init/lenet5/seed0").state_dict.items()}
    huge = {k: v * 1e37 if v.is_floating_point() else v for k, v in base.items()}
    other = {k: v * 1e37 for k, v in _entry(benign_entries(), "init/lenet5/seed1").state_dict.items()}
    for model, reference in ((base, huge), (other, huge), (huge, {k: v.flip(0) for k, v in huge.items()})):
        context = InspectContext(view=ModelView.from_state_dict(model), reference=ModelView.from_state_dict(reference))
        findings, _ = run_detectors(context, ["reference_drift"])
        assert findings and all(math.isfinite(v) for f in findings for v in f.evidence.values() if isinstance(v, float))


@pytest.mark.parametrize("noise", [0.05, 0.1, 0.2])
def test_an_imprint_layer_with_noisy_rows_is_still_caught(noise):
    """Noise on the rows keeps the bins (5 %: 7 of 32 digits rebuilt above 30 dB); only FG301's near tier sees it."""
    entry = _entry(crafted_entries(), "imprint/mlp/randn-k128-data")
    sd = {k: v.clone() for k, v in entry.state_dict.items()}
    exact = {f.layer for f in static_findings(sd) if f.rule_id == "FG301"}
    gen = torch.Generator().manual_seed(0)
    for name in exact:
        rows = sd[f"{name}.weight"]
        rows += noise * rows.norm(dim=1, keepdim=True) / rows.shape[1] ** 0.5 * torch.randn(rows.shape, generator=gen)
    findings = [f for f in static_findings(sd) if f.rule_id == "FG301"]
    assert {f.layer for f in findings} == exact and judge(findings) is Verdict.MALICIOUS
    assert all(0.9 < f.evidence["min_abs_cosine"] < 0.999 for f in findings)


def test_an_imprint_of_identical_sparse_rows_is_caught():
    """256 rows of one 30-of-64 sparse measurement with a ladder of biases rebuilt 33-44 of 64 digits exactly; the
    density rule (meant for rows pruned to a weight or two) had passed it as clean."""
    torch.manual_seed(0)
    measurement = torch.rand(64) * (torch.rand(64) < 0.47)
    sd = {"1.weight": measurement.repeat(256, 1), "1.bias": -torch.linspace(0.1, 3.0, 256),
          "3.weight": torch.randn(10, 256) * 0.05, "3.bias": torch.zeros(10)}  # fmt: skip
    assert (sd["1.weight"][0] != 0).float().mean() < 0.5
    found = _rules_of(sd)
    assert found["FG301"].layer == "1" and judge(list(found.values())) is Verdict.MALICIOUS


def test_an_imprint_in_a_grouped_convolution_after_an_unlike_layer_stays_high():
    """Filters of one input channel each, 16 to a group, one full-image measurement with a ladder of paired
    thresholds, after a 1x1 convolution whose rows are not alike: the server rebuilt 4-5 of 64 inputs exactly. A
    relief for honest depthwise filters that read different channels (EfficientNet-B0 at 32x32) had called it low,
    clean with --arch and --data too, and was withdrawn: the file's shapes and order cannot tell what fills a
    channel."""
    gen = torch.Generator().manual_seed(1)
    measurement = torch.randn(32 * 32, generator=gen) / 32
    base = torch.linspace(-1.0, 1.0, 8)
    sd = {"feeder.weight": 0.5 * torch.randn(3, 3, 1, 1, generator=gen), "feeder.bias": torch.zeros(3),
          "dw.weight": measurement.view(1, 1, 32, 32).expand(48, 1, 32, 32).clone(),
          "dw.bias": -torch.stack([base, base + 0.02], 1).flatten().repeat(3),
          "head.weight": (torch.randn(10, 24, generator=gen) * 0.1).repeat_interleave(2, dim=1), "head.bias": torch.zeros(10)}
    found = [f for f in static_findings(sd) if f.rule_id == "FG301" and f.layer == "dw"]
    assert found and found[0].severity is Severity.HIGH and judge(found) is Verdict.MALICIOUS


def test_head_rows_of_unseen_classes_are_low_but_the_same_rows_feeding_a_layer_are_an_imprint():
    """Weight decay turns a head's unseen classes into one row with their own biases (a 100-class head on the ten
    digits: 90 rows, cosine 0.9999997); logits bin nothing. Stored last but read by a decoder, the rows bin."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 100))
    with torch.no_grad():
        mlp[3].weight[10:] = -0.1 * torch.rand(32)
    sd = {k: v.clone() for k, v in mlp.state_dict().items()}
    found = _rules_of(sd)  # from the file alone, an imprint layer stored last and read by no layer looks the same
    assert found["FG301"].severity is Severity.MEDIUM and judge(list(found.values())) is Verdict.SUSPICIOUS
    found = _with_data(mlp, (1, 8, 8), ["imprint"])  # the model's output is that layer's: logits
    assert found["FG301"].severity is Severity.LOW and found["FG301"].evidence["logits_shown"]
    decoder = {"4.weight": torch.randn(64, 100) * 0.1, "4.bias": torch.zeros(64)}
    found = _rules_of({**decoder, **sd})  # the decoder stored first: 3 is still the last layer stored
    assert found["FG301"].severity is Severity.HIGH and judge(list(found.values())) is Verdict.MALICIOUS


def _sign_step_rows(bias_at_quantiles: bool) -> nn.Module:
    """An MLP whose first layer has 8 rows near minus the all-ones vector (|cosine| 0.97 or more), as a server's Adam
    with a tiny epsilon leaves units that died on pixels (Flower's FedAdam, tau 1e-9: groups of 5-83 rows at
    0.951-0.962 by round 10-50, the model 95 % accurate); biases small and negative (dead on every digit), or at
    quantiles of the rows' responses on digits (a noisy imprint that bins them)."""
    from fedguard.architectures import build_model

    torch.manual_seed(0)
    mlp = build_model("mlp")
    x, _ = digits((1, 28, 28))
    moved = (x.flatten(1).std(dim=0) > 0).float()  # a pixel always blank gets no gradient, so no step either
    rows = mlp[1].weight[:8].detach() - 0.17 * moved * (1 + 0.1 * torch.randn(8, 784))
    with torch.no_grad():
        mlp[1].weight[:8] = rows
        if bias_at_quantiles:
            response = x[64:].flatten(1) @ rows.T
            mlp[1].bias[:8] = -torch.quantile(response, torch.linspace(0.2, 0.8, 8), dim=0).diagonal()
        else:
            mlp[1].bias[:8] = -torch.linspace(0.12, 0.17, 8)
    return mlp


@pytest.mark.parametrize("bias_at_quantiles", [False, True])
def test_alike_rows_that_no_example_reaches_are_low_with_the_clients_data(bias_at_quantiles):
    """From the file alone they are an imprint's noisy rows (high); on the client's digits, rows dead by 6.3-7.1
    standard deviations in the federated runs bin nothing (low), while the same rows with a ladder among the
    examples still bin them (high)."""
    mlp = _sign_step_rows(bias_at_quantiles)
    found = _rules_of({k: v.clone() for k, v in mlp.state_dict().items()})
    assert found["FG301"].severity is Severity.HIGH and "min_abs_cosine" in found["FG301"].evidence
    found = _with_data(mlp, (1, 28, 28), ["imprint"], n=64)["FG301"]
    if bias_at_quantiles:
        assert found.severity is Severity.HIGH and "silent_margin" not in found.evidence
    else:
        assert found.severity is Severity.LOW and found.evidence["silent_margin"] >= 3


@pytest.mark.parametrize("norm_after", [False, True])
def test_alike_rows_silent_in_eval_mode_but_not_in_training_stay_high(norm_after):
    """A red team's evasion of the relief above: a BatchNorm before the rows, left at its start (mean 0, variance 1),
    hands them raw pixels in the check's eval pass (dead) but the batch standardised by its own statistics in the
    client's training, where they bin it (8-11 of 16 digits rebuilt). One after them (argued by a second red team)
    moves their thresholds in training alone. The model computes otherwise in training: high."""
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(256)] if norm_after else []
    model = nn.Sequential(nn.Flatten(), nn.Identity() if norm_after else nn.BatchNorm1d(784), nn.Linear(784, 256),
                          *norm, nn.ReLU(), nn.Linear(256, 10))  # fmt: skip
    x, _ = digits((1, 28, 28))
    moved = (x.flatten(1).std(dim=0) > 0).float()
    with torch.no_grad():
        model[2].weight[:8] = model[2].weight[:8] - 0.17 * moved * (1 + 0.1 * torch.randn(8, 784))
        model[2].bias[:8] = -torch.linspace(0.12, 0.17, 8)
    found = _with_data(model, (1, 28, 28), ["imprint"], n=64)["FG301"]
    assert found.severity is Severity.HIGH and "silent_margin" not in found.evidence


def _behind_a_batchnorm(attack: str, running_var: float = 1.0) -> nn.Module:
    """An MLP whose first Linear layer reads a BatchNorm at its running statistics ``(0, running_var)``, set to leak the
    batch as the client's training standardises it by its own statistics: biases at the 95th percentile of each
    honest unit's response (``"quantile"``) or 64 copies of one row with a ladder of biases (``"imprint"``), both on
    public digits so standardised."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(784), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    public = digits((1, 28, 28))[0][64:].flatten(1)
    standardised = (public - public.mean(dim=0)) / (public.var(dim=0, unbiased=False) + 1e-5).sqrt()
    with torch.no_grad():
        model[1].running_var.fill_(running_var)
        if attack == "quantile":
            model[2].bias.copy_(-torch.quantile(standardised @ model[2].weight.T, 0.95, dim=0))
        else:
            model[2].weight[:64] = torch.randn(784)
            model[2].bias[:64] = -torch.quantile(standardised @ model[2].weight[0], torch.linspace(0.02, 0.98, 64))
    return model


def test_sparse_firing_that_only_training_normalisation_sets_off_is_reported_from_that_pass():
    """In eval mode the BatchNorm hands the layer raw pixels, on which every unit is dead (FG805, medium); the
    client's training standardises the batch and 252 of 253 reached units fire for at most 1/8 of it, isolating 22
    of 64 digits."""
    found = _with_data(_behind_a_batchnorm("quantile"), (1, 28, 28), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "2"
    assert found.evidence["normalisation"] == "as in training" and found.evidence["isolated_examples"] >= 16
    assert "normalised as your training normalises them" in found.message


def test_an_imprint_that_only_training_normalisation_sets_off_is_reported_from_that_pass():
    """A running variance of 1e8 makes the eval pass's input all but the same for every example, every threshold
    outside it; standardised by the batch, the 64 copies cut it into bins."""
    model = _behind_a_batchnorm("imprint", running_var=1e8)
    found = _with_data(model, (1, 28, 28), ["responses"], n=64)
    assert list(found) == ["FG804"] and found["FG804"].evidence["normalisation"] == "as in training"
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].evidence["units"] >= 60


def test_a_layer_reported_in_eval_mode_is_reported_once():
    model = _behind_a_batchnorm("imprint")  # at running variance 1 the eval pass bins the raw pixels too
    x, y = digits((1, 28, 28))
    found, _ = run_detectors(InspectContext(ModelView.from_state_dict(model.state_dict(), model), data=(x[:64], y[:64])),
                             ["responses"])  # fmt: skip
    assert [f.rule_id for f in found] == ["FG804"] and "normalisation" not in found[0].evidence


@pytest.mark.parametrize("hidden_from_eval", [False, True])
def test_an_imprint_whose_thresholds_a_batchnorm_after_it_sets_is_one_measurement(hidden_from_eval):
    """64 copies of one row, no bias, then a BatchNorm whose shifts are a ladder of z-scores: in training each batch is
    binned at those z-scores of its own measurement, whatever the data's scale. The rows alone put every threshold at
    zero (one, clean); the cuts are read where the units switch, after the BatchNorm. At running statistics of the
    public data the eval pass bins the examples too; at a running variance of 1e8 only the training pass does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    measured = digits((1, 28, 28))[0][64:].flatten(1) @ model[1].weight[0].detach()
    with torch.no_grad():
        model[1].weight.copy_(model[1].weight[0].clone())
        model[2].bias.copy_(torch.linspace(-2, 2, 64))
        model[2].running_mean.fill_(float(measured.mean()))
        model[2].running_var.fill_(1e8 if hidden_from_eval else float(measured.var()))
    found = _with_data(model, (1, 28, 28), ["responses"], n=64)
    assert found["FG804"].severity is Severity.HIGH and found["FG804"].evidence["units"] == 64 and found["FG804"].evidence["thresholds"] >= 32
    assert ("normalisation" in found["FG804"].evidence) is hidden_from_eval


class _NormedTwice(nn.Module):
    """A red team's BatchNorm called twice in one forward pass: on the features and on five times them, the second
    output unused. Running statistics set by a pass keep the second call's."""

    def __init__(self, running: bool):
        super().__init__()
        self.rows, self.norm = nn.Linear(64, 512), nn.BatchNorm1d(512, track_running_stats=running)
        self.planted, self.head = nn.Linear(512, 512), nn.Linear(512, 10)

    def forward(self, x):
        features = torch.relu(self.rows(x.flatten(1)))
        normed = self.norm(features)
        self.norm(5 * features)
        return self.head(torch.relu(self.planted(normed)))


@pytest.mark.parametrize("running", [True, False])
@pytest.mark.parametrize("twice", [False, True])
def test_units_that_only_batches_larger_than_a_chunk_set_off_are_sparse_firing(running, twice):
    """A red team's units past the bound a batch puts on its own standardisation: ``n`` examples standardised by
    their own statistics stand at most ``sqrt(n - 1)`` deviations out (3.87 at 16, 7.94 at 64). 85 % of a second
    layer reads one BatchNorm feature each, its bias above what any batch of 8-16 public digits reaches; in training
    at batch 64 each fires for the batch's top example (half the digits rebuilt at >= 30 dB, 0 % for the honest
    model), and in eval mode a running variance 25 times the data's keeps it dead. Standardised by batches of 16
    the pass had read it dead too (clean); by the statistics of all the client's examples, high. A BatchNorm that
    keeps no running statistics (a second red team) standardises by the batch in eval mode too: read in chunks of 16,
    the same units had been dead there; now at the statistics of all the examples. The same BatchNorm called once
    more, before the planted layer reads it (a third), had kept that call's statistics: each call has its own now."""
    torch.manual_seed(2)
    if twice:
        model = _NormedTwice(running)
        rows, norm, planted_layer = model.rows, model.norm, model.planted
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(),
                              nn.BatchNorm1d(512, track_running_stats=running), nn.Linear(512, 512), nn.ReLU(),
                              nn.Linear(512, 10))  # fmt: skip
        rows, norm, planted_layer = model[1], model[3], model[4]
    public = digits((1, 8, 8))[0].flatten(1)
    with torch.no_grad():
        rows.bias.copy_(-torch.quantile(public @ rows.weight.T, 0.8, dim=0))
        features = torch.relu(rows(public))
        if running:
            norm.running_mean.copy_(features.mean(dim=0))
            norm.running_var.copy_(features.var(dim=0) * 25)
        planted, read = torch.randperm(512)[:435], torch.randperm(512)[:435]
        planted_layer.weight[planted] = 0.03 * torch.randn(435, 512)
        planted_layer.weight[planted, read] = 1.0
        highest = torch.full((512,), -math.inf)
        for size in torch.randint(8, 17, (300,)).tolist():
            batch = features[torch.randperm(len(features))[:size]]
            standardised = (batch - batch.mean(dim=0)) / (batch.var(dim=0, unbiased=False) + 1e-5).sqrt()
            highest = torch.maximum(highest, (standardised @ planted_layer.weight.T).max(dim=0).values)
        planted_layer.bias[planted] = -(1.03 * highest[planted] + 0.05)
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == ("planted" if twice else "4")
    assert found.evidence.get("normalisation") == ("as in training" if running else None)


class _ShiftedRows(nn.Module):
    """Bias-free rows with their thresholds in a parameter of their own, added before the ReLU."""

    def __init__(self):
        super().__init__()
        self.rows, self.shift = nn.Linear(784, 64, bias=False), nn.Parameter(torch.zeros(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.rows(x.flatten(1)) + self.shift))


def test_an_imprint_whose_thresholds_are_added_after_the_rows_is_one_measurement():
    """A red team's ladder held by a parameter added to bias-free rows' output: read on the rows' output the 64 units
    switch together (one cut, clean); the examples' gradients, which reach each unit above its threshold, cut them
    into bins (82-100 % of batches of 8-64 rebuilt)."""
    torch.manual_seed(0)
    model = _ShiftedRows()
    measured = digits((1, 28, 28))[0][64:].flatten(1) @ model.rows.weight[0].detach()
    with torch.no_grad():
        model.rows.weight.copy_(model.rows.weight[0].clone())
        model.shift.copy_(-torch.quantile(measured, torch.linspace(0.02, 0.98, 64)))
    found = _with_data(model, (1, 28, 28), ["responses"], n=64)["FG804"]
    assert found.severity is Severity.HIGH and found.evidence["units"] == 64 and found.evidence["thresholds"] >= 32


def test_the_training_pass_leaves_the_callers_running_statistics_and_modes():
    model = _behind_a_batchnorm("quantile").train()
    frozen = model[1].eval()  # a caller's frozen BatchNorm in a training model
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert "FG803" in _with_data(model, (1, 28, 28), ["responses"], n=64)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert not frozen.training and all(m.training for m in model.modules() if m is not frozen)


def test_the_examples_go_through_the_received_model_once_for_every_check_that_reads_its_layers(monkeypatch):
    """FG803/FG804, FG805 and FG301's relief read the same pass (each had run its own; the relief one per group)."""
    from fedguard.detectors import linear_passes

    model, calls = _sign_step_rows(bias_at_quantiles=False), []
    measure = linear_passes.linear_layers_seen
    monkeypatch.setattr(linear_passes, "linear_layers_seen", lambda module, *args: calls.append(module) or measure(module, *args))
    found = _with_data(model, (1, 28, 28), ["imprint", "responses", "silenced"], n=64)
    assert found["FG301"].severity is Severity.LOW and calls == [model]


def test_a_model_whose_batchnorm_keeps_no_running_statistics_is_checked_with_the_clients_data():
    """Such a layer standardises every batch by its own, in eval mode too: the per-example gradients of FG801 had
    failed on one example (exit 2, "fix the architecture's code", for an honest model). Its statistics are the
    data's while the examples go through one by one, and it keeps none afterwards."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128, track_running_stats=False), nn.ReLU(),
                          nn.Linear(128, 10))  # fmt: skip
    found = _with_data(model, (1, 8, 8), n=64)
    assert not found and model[2].running_mean is None and not model[2].track_running_stats
    assert "running_mean" not in model.state_dict() and "2.running_mean" not in model.state_dict()
    twin, x = copy.deepcopy(model).double(), digits((1, 8, 8))[0][:64].double()  # FG804's float64 pass runs it too
    with evaluating_one_by_one(twin, x):
        assert twin(x[:1]).dtype == torch.float64


@pytest.mark.parametrize("running", [True, False])
def test_a_batchnorm_called_twice_normalises_each_call_as_training_does(running):
    """What the planted layer reads, the norm's first call, in whole passes of the model (in chunks too)."""
    model, x, read = _NormedTwice(running), digits((1, 8, 8))[0][:64], []
    hook = model.planted.register_forward_pre_hook(lambda layer, args: read.append(args[0]))
    with torch.no_grad():
        model.train()(x)
        model.eval()
        before = copy.deepcopy(model.state_dict())
        enter = normalising_as_in_training if running else evaluating_one_by_one
        with enter(model, x):
            model(x[:32]), model(x[32:])
    hook.remove()
    torch.testing.assert_close(torch.cat(read[-2:]), read[0], rtol=0.02, atol=0.02)  # the running variance: unbiased
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class _Shifted(nn.Module):
    """``x * 1 + 0`` after a dropout, written as code: what the layer reads is a new tensor of the same values."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return nn.functional.dropout(x, self.p, self.training) * 1 + 0


def _behind_dropout(planted: bool, p: float = 0.5, seed: int = 1, dropout=nn.Dropout) -> nn.Sequential:
    """An MLP with ``dropout`` before its second layer and its head. ``planted``: a red team's biases on half of the
    second layer's units, each just above every eval-mode response of public digits (not the client's), where
    training's dropout sets it off for about one example in 32 (94 / 76 / 62 % of batches of 8 / 32 / 64 rebuilt at
    >= 30 dB)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), dropout(p), nn.Linear(512, 256), nn.ReLU(),
                          dropout(p), nn.Linear(256, 10))  # fmt: skip
    if planted:
        units = torch.arange(0, 256, 2)
        evaluated, trained = _public_responses(model, units, p)
        with torch.no_grad():
            top = torch.maximum(torch.quantile(trained, 1 - 1 / 32, dim=0),
                                evaluated.max(dim=0).values + 0.02 * evaluated.std(dim=0))  # fmt: skip
            model[4].bias[units] = -top
    return model


def _public_responses(model: nn.Sequential, units: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """How ``units`` of ``_behind_dropout``'s second layer respond, bias aside, to the public digits (not the
    client's): in eval mode, and under eight draws of training's dropout at ``p``."""
    public, layer = digits((1, 8, 8))[0][64:].flatten(1), model[4]
    with torch.no_grad():
        features = model[2](model[1](public))
        evaluated = (features @ layer.weight.T)[:, units]
        trained = torch.cat([(features * (torch.rand_like(features) >= p) / (1 - p)) @ layer.weight[units].T
                             for _ in range(8)])  # fmt: skip
    return evaluated, trained


@pytest.mark.parametrize("dropout", [nn.Dropout, _Shifted])
def test_units_that_only_trainings_dropout_sets_off_are_sparse_firing(dropout):
    """Dead on every example in eval mode, the planted units had read clean; one draw of the dropout, as a training
    step takes, sets them off for single examples. A second red team's ``* 1`` after ``F.dropout`` (and the like)
    had hidden the dropout from a check that followed its output tensor: the pass now applies it."""
    found = _with_data(_behind_dropout(planted=True, dropout=dropout), (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "4" and found.evidence["isolated_examples"] >= 16
    assert found.evidence["dropout"] == 0.5 and "normalisation" not in found.evidence
    assert "one draw of the dropout" in found.message


def test_units_behind_dropout_and_an_activation_in_place_are_read_from_a_copy_in_the_dropout_pass():
    """The planted units after dropout, a ReLU6 in place after them: the dropout pass reads them from a copy too (it
    had read the activation's output gradient there, and the layer clean), with the same masks as the model without
    in place (a chunk taken again had drawn new ones: an honest sweep's in-place VGG read otherwise than its twin)."""
    found = {}
    for inplace in (True, False):
        model = _behind_dropout(planted=True)
        model[5] = nn.ReLU6(inplace=inplace)
        found[inplace] = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found[True].severity is Severity.HIGH and found[True].layer == "4" and found[True].evidence["dropout"] == 0.5
    assert found[True].evidence == found[False].evidence


def test_units_saturated_in_eval_mode_that_dropout_brings_back_are_sparse_firing():
    """A red team's ReLU6 after the layer, its planted units' biases past 6 on every eval-mode response (switched on,
    but no gradient reaches them) and under 6 for about one example in 32 in training: 100 / 92 / 79 / 43 % of
    batches of 8 / 16 / 32 / 64 rebuilt, clean while the check re-read only units whose reach was their switching."""
    model, units = _behind_dropout(planted=False), torch.arange(0, 256, 2)
    model[5] = nn.ReLU6()
    evaluated, trained = _public_responses(model, units, 0.5)
    with torch.no_grad():
        lowest = torch.minimum(torch.quantile(trained, 1 / 32, dim=0),
                               evaluated.min(dim=0).values - 0.02 * evaluated.std(dim=0))  # fmt: skip
        model[4].bias[units] = 6 - lowest
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "4" and found.evidence["dropout"] == 0.5


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_honest_models_with_dropout_read_clean_through_it(p):
    """At initialisation (three seeds) and trained with dropout on, then pruned by 80 % and rounded to half
    precision; the layers after dropout are read with a draw of it (their inputs differ from eval mode's)."""
    x, y = digits((1, 8, 8))
    for seed in range(3):
        model = _behind_dropout(planted=False, p=p, seed=seed)
        assert not _with_data(model, (1, 8, 8), ["responses"], n=64)
    in_eval = linear_layers_seen(model, x[:64], y[:64])
    drawn = layers_in_training(model, x[:64], y[:64], lambda: in_eval)
    assert [seen.name for seen in drawn] == ["4"] and drawn[0].dropout == p
    assert not torch.equal(drawn[0].inputs, in_eval[1].inputs) and bool((drawn[0].grad != 0).any())
    trained = train_with_adam(model, x[64:], y[64:], epochs=5, seed=0)
    assert not _with_data(trained, (1, 8, 8), ["responses"], n=64)
    for layer in (trained[1], trained[4], trained[7]):
        prune.l1_unstructured(layer, "weight", amount=0.8)
        prune.remove(layer, "weight")
    assert not _with_data(trained, (1, 8, 8), ["responses"], n=64)
    assert not _with_data(trained.half().float(), (1, 8, 8), ["responses"], n=64)


class _AppliedTwice(nn.Module):
    """One Linear layer applied to a digit and to its mirror image, the two summed (as a siamese or weight-tied model
    applies a layer more than once)."""

    def __init__(self):
        super().__init__()
        self.shared, self.head = nn.Linear(64, 256), nn.Linear(256, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.head(torch.relu(self.shared(x)) + torch.relu(self.shared(x.flip(-1))))


class _ReluCell(nn.Module):
    """A recurrent ReLU cell written with Linear layers, run over the 8 rows of a digit."""

    def __init__(self):
        super().__init__()
        self.read, self.carry, self.head = nn.Linear(8, 128), nn.Linear(128, 128), nn.Linear(128, 10)

    def forward(self, x):
        state = x.new_zeros(len(x), 128)
        for row in x.flatten(1).view(-1, 8, 8).unbind(1):
            state = torch.relu(self.read(row) + self.carry(state))
        return self.head(state)


def test_a_layer_the_forward_pass_applies_twice_is_measured_over_both_calls():
    """A third red team's quantile biases in a layer applied twice (not measured before: 93 / 94 / 84 / 67 % of
    batches of 8 / 16 / 32 / 64 rebuilt, clean): rare over the 128 inputs it reads from 64 digits, and each example
    isolated by either call counts once."""
    torch.manual_seed(1)
    model, (x, y) = _AppliedTwice(), digits((1, 8, 8))
    public = x[64:].flatten(1)
    with torch.no_grad():
        responses = torch.cat([public, public.flip(-1)]) @ model.shared.weight.T
        model.shared.bias.copy_(-torch.quantile(responses, 1 - 1 / 64, dim=0))
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "shared" and found.evidence["calls"] == 2
    assert found.evidence["examples"] == 64 and 16 <= found.evidence["isolated_examples"] <= 64
    seen = linear_layers_seen(model, x[:64], y[:64])[0]
    assert seen.calls == 2 and seen.inputs.shape == (128, 64)
    torch.testing.assert_close(seen.inputs[64:], x[:64].flatten(1).flip(-1).double())  # the calls one after another


@pytest.mark.parametrize("build", [_AppliedTwice, _ReluCell])
def test_honest_layers_applied_more_than_once_read_clean(build):
    """At three initialisations and trained; a recurrent cell's layers read all 8 rows of each example."""
    x, y = digits((1, 8, 8))
    for seed in range(3):
        torch.manual_seed(seed)
        model = build()
        assert not _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert not _with_data(train_with_adam(model, x[64:], y[64:], epochs=5, seed=0), (1, 8, 8), ["responses"], n=64)
    assert all(seen.calls == (2 if build is _AppliedTwice else 8) for seen in linear_layers_seen(model, x[:64], y[:64]))


class _TokenTransformer(nn.Module):
    """Digits as 8 tokens of 8 pixels through torch's encoder layer, whose feed-forward layers apply per token;
    ``batch_first=False`` is torch's default layout, the examples second."""

    def __init__(self, activation: str = "relu", batch_first: bool = True):
        super().__init__()
        self.embed, self.position = nn.Linear(8, 32), nn.Parameter(torch.randn(1, 8, 32) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 128, dropout=0.1, activation=activation,
                                                  batch_first=batch_first)  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        tokens = self.embed(x.reshape(len(x), 8, 8)) + self.position
        if self.encoder.self_attn.batch_first:
            return self.head(self.encoder(tokens).mean(1))
        return self.head(self.encoder(tokens.transpose(0, 1)).mean(0))


def _token_inputs(model: _TokenTransformer, x: torch.Tensor) -> torch.Tensor:
    """What the encoder's first feed-forward layer reads from ``x``, ``[examples, tokens, features]``."""
    read = []
    hook = model.encoder.linear1.register_forward_hook(lambda layer, args, output: read.append(args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        hook.remove()
    return read[0] if model.encoder.self_attn.batch_first else read[0].transpose(0, 1)


def _plant_per_token(model: _TokenTransformer, public: torch.Tensor) -> nn.Linear:
    """Set each bias of the encoder's first feed-forward layer at the quantile of its unit's response to the tokens of
    ``public`` digits that makes it fire for about one token of 64 digits; that layer."""
    layer = model.encoder.linear1
    with torch.no_grad():
        response = _token_inputs(model, public).flatten(0, 1) @ layer.weight.T
        layer.bias.copy_(-torch.quantile(response, 1 - 1 / (64 * 8), dim=0))
    return layer


@pytest.mark.parametrize("batch_first", [True, False])
def test_biases_at_a_high_quantile_in_a_per_token_feed_forward_layer_are_sparse_firing(batch_first):
    """Honest weights in a transformer's feed-forward layer, each bias at the quantile that makes its unit fire for
    about one token of a batch of 64 digits: FG803 had read only layers applied to one feature vector per example
    (a red team's tiny ViT so planted: 210 of 320 patches rebuilt, clean). Each example it counts as isolated has a
    token that one unit's update gives back exactly, with the examples first or second."""
    torch.manual_seed(0)
    model, (x, y) = _TokenTransformer(batch_first=batch_first), digits((1, 8, 8))
    layer = _plant_per_token(model, x[64:])
    assert judge(static_findings(model.state_dict())) is Verdict.CLEAN
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.layer == "encoder.linear1"
    assert found.evidence["tokens"] == 8 and found.evidence["rare_share"] >= 0.9
    seen = next(s for s in linear_layers_seen(model, x[:64], y[:64]) if s.name == "encoder.linear1")
    counts = seen.reach_counts()
    assert counts.shape == (64, 128) and int(counts.sum()) > 0
    model.zero_grad()
    nn.functional.cross_entropy(model(x[:64]), y[:64], reduction="sum").backward()
    tokens, rebuilt = _token_inputs(model, x[:64]), set()
    for unit in (counts.sum(dim=0) == 1).nonzero()[:, 0].tolist():
        example = int(counts[:, unit].nonzero())
        guess = layer.weight.grad[unit] / layer.bias.grad[unit]
        error = (tokens[example] - guess).norm(dim=1).min() / tokens[example].norm(dim=1).max()
        assert float(error) < 1e-4
        rebuilt.add(example)
    assert len(rebuilt) == found.evidence["isolated_examples"] >= 16


@pytest.mark.parametrize("short", ["isolated", "share"])
def test_rare_units_of_a_per_token_layer_isolating_few_examples_are_medium(monkeypatch, short):
    """Honest tiny ViTs trained with Adam had 0.35-0.44 of a feed-forward layer's units rare on two or three of six
    batches, 3-15 of 64 examples isolated (a token each): high had made them malicious."""
    from fedguard.detectors import responses

    torch.manual_seed(0)
    model, (x, _) = _TokenTransformer(), digits((1, 8, 8))
    _plant_per_token(model, x[64:])
    if short == "isolated":
        monkeypatch.setattr(responses, "isolated_examples", lambda counts: 12)
    else:
        monkeypatch.setattr(responses, "TOKENS_RARE_SHARE", 1.01)
    monkeypatch.setattr(responses, "_fresh_isolated", lambda *args: 2)
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.MEDIUM and "or under 20% of your examples isolated" in found.message


@pytest.mark.parametrize("spans", [1, 2, None, "leaky"])
def test_bins_in_a_per_token_feed_forward_layer_are_one_measurement_where_the_next_layer_ties_them(spans):
    """Red teams' Robbing the Fed in a transformer's feed-forward layer: half its units measure one direction of
    the tokens (rows alike there, apart in directions the tokens barely move, so no weight pattern shows) at
    thresholds set by quantiles, ``spans`` units per threshold, the next layer's columns for them in ``spans``
    directions, so the server solves each threshold's gradients ``spans`` by ``spans`` and neighbouring bins'
    differences return single tokens (every example of batches of 8-64 with one direction, 23-26 of 32 with two;
    clean). With the next layer's columns as initialised (``None``) the differences do not cancel, and honest
    layers of trained transformers respond so (FG804 on 6 of 50 honest models before the next layer was read).
    Behind a LeakyReLU of slope 1e-9 (a reviewer's) the tied bins had read in 64 directions, clean."""
    leaky = spans == "leaky"
    spans = 1 if leaky else spans
    torch.manual_seed(0)
    model, (x, _) = _TokenTransformer(), digits((1, 8, 8))
    if leaky:
        model.encoder.activation = nn.LeakyReLU(1e-9)
    tokens = _token_inputs(model, x[64:]).flatten(0, 1)
    _, _, directions = torch.linalg.svd(tokens - tokens.mean(dim=0), full_matrices=False)
    measured, quiet, generator = directions[0], directions[-8:], torch.Generator().manual_seed(3)
    noise = torch.randn(64, 8, generator=generator) @ quiet
    rows = 0.2 * measured + 0.5 * noise / noise.norm(dim=1, keepdim=True)
    thresholds = torch.quantile(tokens @ measured, torch.linspace(0, 1, 64 // (spans or 1) + 2)[1:-1])
    thresholds = thresholds.repeat_interleave(spans or 1)
    with torch.no_grad():
        model.encoder.linear1.weight[:64] = rows
        model.encoder.linear1.bias[:64] = -(0.2 * thresholds + (rows - 0.2 * measured) @ tokens.mean(dim=0))
        if spans:
            columns = torch.randn(32, spans, generator=generator) @ torch.randn(spans, 64, generator=generator)
            model.encoder.linear2.weight[:, :64] = columns / columns.norm(dim=0) / 10
    assert judge(static_findings(model.state_dict())) is not Verdict.MALICIOUS
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)
    if spans:
        assert found["FG804"].severity is Severity.HIGH and found["FG804"].layer == "encoder.linear1" and found["FG804"].evidence["units"] >= 60
    else:
        assert "FG804" not in found


class _Stacked(nn.Module):
    """A digit and its mirror image stacked as two tokens through one layer, the examples first or second."""

    def __init__(self, examples_dim: int):
        super().__init__()
        self.examples_dim, self.shared, self.head = examples_dim, nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x):
        tokens = torch.stack([x.flatten(1), x.flatten(1).flip(-1)], dim=1 - self.examples_dim)
        return self.head(torch.relu(self.shared(tokens)).sum(dim=1 - self.examples_dim))


@pytest.mark.parametrize("examples_dim", [0, 1])
def test_two_tokens_per_example_are_told_from_the_examples(examples_dim, monkeypatch):
    """The probe's three examples, and a chunk's sixteen, are not the two tokens: the passes tell which dimension
    holds the examples, in chunks of two too (the third red team's mirror images, stacked into one call, had gone
    unread)."""
    from fedguard.detectors import linear_passes

    torch.manual_seed(1)
    model, (x, y) = _Stacked(examples_dim), digits((1, 8, 8))
    assert not _with_data(model, (1, 8, 8), ["responses"], n=64)  # honest, as initialised
    public = x[64:].flatten(1)
    with torch.no_grad():
        response = torch.cat([public, public.flip(-1)]) @ model.shared.weight.T
        model.shared.bias.copy_(-torch.quantile(response, 1 - 1 / 64, dim=0))
    found = _with_data(model, (1, 8, 8), ["responses"], n=64)["FG803"]
    assert found.severity is Severity.HIGH and found.evidence["tokens"] == 2
    assert found.evidence["isolated_examples"] >= 16
    seen = linear_layers_seen(model, x[:64], y[:64])[0]
    assert seen.layout == (examples_dim,)
    monkeypatch.setattr(linear_passes, "_chunk_size", lambda module, inputs: 2)  # a large model's chunks
    assert linear_layers_seen(model, x[:64], y[:64])[0].layout == (examples_dim,)
    torch.testing.assert_close(seen.inputs[:2], torch.stack([x[0].flatten(), x[0].flatten().flip(-1)]).double())


class _Checkpointed(nn.Module):
    """An MLP whose hidden layer runs under activation checkpointing (its forward runs again inside the backward)."""

    def __init__(self):
        super().__init__()
        self.hidden, self.head = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return self.head(checkpoint(lambda t: torch.relu(self.hidden(t)), x.flatten(1), use_reentrant=False))


def test_a_layer_under_activation_checkpointing_is_read_once_per_call():
    """The forward's second run inside the backward had counted as another call, and the layer had been dropped as
    applied otherwise than the probe saw."""
    x, y = digits((1, 8, 8))
    seen = linear_layers_seen(_Checkpointed(), x[:64], y[:64])
    assert [(s.name, s.calls) for s in seen] == [("hidden", 1)]


class _PerTokenHead(nn.Module):
    """Digits as 8 tokens, a hidden layer and the head applied per token, the logits averaged over the tokens."""

    def __init__(self, width: int = 1):
        super().__init__()
        self.hidden, self.head = nn.Linear(8 * width, 32), nn.Linear(32, 10)
        self.width = width

    def forward(self, x):
        tokens = x.reshape(len(x), 8 // self.width, 8 * self.width)
        return self.head(torch.relu(self.hidden(tokens))).mean(1)


def test_a_head_applied_per_token_is_the_head_and_one_token_is_a_feature_vector():
    """The head is left out however it is applied (a per-token one had been read); a layer applied to one token per
    example is judged as one reading a feature vector per example (it had taken the per-token rules)."""
    from fedguard.detectors.linear_passes import TokenwiseSeen
    from fedguard.detectors.responses import _several_tokens

    x, y = digits((1, 8, 8))
    seen = linear_layers_seen(_PerTokenHead(), x[:64], y[:64])
    assert [(s.name, s.calls, isinstance(s, TokenwiseSeen)) for s in seen] == [("hidden", 8, True)]
    one = linear_layers_seen(_PerTokenHead(width=8), x[:64], y[:64])
    assert [s.calls for s in one] == [1] and not _several_tokens(one[0])


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_honest_per_token_feed_forward_layers_read_clean(activation):
    """At three initialisations (in both layouts), trained, pruned by 90 % and through fp16."""
    x, y = digits((1, 8, 8))
    for seed in range(3):
        torch.manual_seed(seed)
        assert not _with_data(_TokenTransformer(activation, batch_first=seed != 1), (1, 8, 8), ["responses"], n=64)
    model = train_with_adam(_TokenTransformer(activation), x[64:], y[64:], epochs=10, seed=0)
    assert not _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert {type(s).__name__ for s in linear_layers_seen(model, x[:64], y[:64])} == {"TokenwiseSeen"}
    for layer in (model.encoder.linear1, model.encoder.linear2):
        prune.l1_unstructured(layer, "weight", amount=0.9)
        prune.remove(layer, "weight")
    assert not _with_data(model, (1, 8, 8), ["responses"], n=64)
    assert not _with_data(model.half().float(), (1, 8, 8), ["responses"], n=64)


class _RefusesTraining(nn.Module):
    """A model whose own code refuses to run with its BatchNorm in training mode."""

    def __init__(self):
        super().__init__()
        self.norm, self.layer, self.head = nn.BatchNorm1d(64), nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x):
        if self.norm.training:
            raise RuntimeError("this model runs in eval mode only")
        return self.head(torch.relu(self.layer(self.norm(x.flatten(1)))))


def test_a_second_pass_the_model_refuses_is_left_out_but_a_fault_of_fedguards_own_is_not(monkeypatch):
    """The model's own code raising as in training leaves the eval pass's findings; a fault in fedguard's second
    pass (the dropout pass's own had hidden all of its findings) surfaces as an error."""
    assert _with_data(_RefusesTraining().eval(), (1, 8, 8), ["responses"], n=64) == {}
    from fedguard.detectors import linear_passes

    monkeypatch.setattr(linear_passes, "draw_generator", functools.partial(torch.Generator().manual_seed, "no seed"))
    with pytest.raises(InputError, match="responses check runs the model"):
        _with_data(_behind_dropout(planted=True), (1, 8, 8), ["responses"], n=64)


def _rules_of(state_dict):
    return {f.rule_id: f for f in static_findings(state_dict)}


def test_lookup_tables_and_transformer_blocks_are_not_oversized_layers():
    torch.manual_seed(0)
    text = torch.nn.Sequential()
    text.add_module("lookup", torch.nn.EmbeddingBag(5000, 64))
    text.add_module("fc", torch.nn.Linear(64, 2))
    assert judge(static_findings(text.state_dict())) is Verdict.CLEAN
    encoder = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4)  # feed-forward 64 -> 2048 -> 64
    assert judge(static_findings(encoder.state_dict())) is Verdict.CLEAN


@pytest.mark.parametrize("crafter, bias", [("class_fishing", True), ("trap_weights", True), ("trap_weights", False),
                                           ("mkor_inconspicuous", True), ("mkor_inconspicuous", False)])
def test_linear_layers_named_like_embeddings_are_scored(crafter, bias):
    """Names are the server's to choose: layers named ``patch_embed`` and ``ensemble_head`` had been read as lookup
    tables and skipped by every rule."""
    from fedguard.attacks.craft import craft

    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("flat", torch.nn.Flatten())
    net.add_module("patch_embed", torch.nn.Linear(64, 64, bias=bias))
    net.add_module("act", torch.nn.ReLU())
    net.add_module("ensemble_head", torch.nn.Linear(64, 10))
    assert judge(static_findings(net.state_dict())) is Verdict.CLEAN
    crafted = craft(crafter, net, input_shape=(1, 8, 8), seed=0)
    assert judge(static_findings(crafted.state_dict())) is Verdict.MALICIOUS


def test_a_smoothing_filter_of_few_inputs_is_not_a_near_averaging_row():
    """A ConvNet trained on two digit classes (grayscale in three channels) had one 3x3x3 first-layer filter of one sign
    varying by 0.096-0.168 (FG101 suspicious): few inputs are smoothed alike honestly; the near tier starts at 32."""
    from fedguard.architectures import build_model

    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(3, 32, 32))
    with torch.no_grad():
        first = model.features[0].weight
        first[0] = 0.2 * (1 + 0.15 * torch.randn(first[0].shape).clamp(-2, 2))
    assert first[0].numel() == 27 and bool((first[0] > 0).all())
    assert "FG101" not in {f.rule_id for f in static_findings(model.state_dict())}


@pytest.mark.parametrize("arch, shape", [("mlp", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("convnet", (3, 32, 32))])
def test_averaging_rows_with_noise_on_every_weight_are_still_fg101(arch, shape):
    """MKOR times (1 + 0.1 N(0, 1)) on every tensor had come out clean on the MLP; the rows' gradients, which do not
    depend on their weights, still carry the class means. Honest units of 16 or more inputs mix signs (no benign
    model's are within NEAR_CV; the benign zoo's own test), so the near tier reports rows of one sign that are nearly
    equal."""
    from fedguard.architectures import build_model
    from fedguard.attacks.craft import craft

    for sigma in (0.1, 0.2):
        torch.manual_seed(0)
        crafted = craft("mkor", build_model(arch, input_shape=shape), input_shape=shape, seed=0).state_dict()
        noise = torch.Generator().manual_seed(1)
        noisy = {k: v * (1 + sigma * torch.randn(v.shape, generator=noise)) for k, v in crafted.items()}
        found = [f for f in static_findings(noisy) if f.rule_id == "FG101"]
        assert found and found[0].evidence["max_variation"] <= 0.2 and judge(static_findings(noisy)) is Verdict.MALICIOUS


def test_a_binarised_layers_rows_of_one_sign_are_not_averaging_rows():
    """XNOR-Net filters are ±α: 2 of 16 3x3 filters all +α had been malicious; a layer all of one sign still is."""
    torch.manual_seed(0)
    conv = torch.sign(torch.randn(16, 1, 3, 3)) * torch.linspace(0.33, 0.46, 16)[:, None, None, None]  # α per filter
    conv[:2] = conv[:2].abs()
    net = {"f.0.weight": conv, "fc.weight": torch.randn(10, 16 * 36) * 0.05, "fc.bias": torch.zeros(10)}
    assert "FG101" not in _rules_of(net)
    assert _rules_of({**net, "f.0.weight": conv.abs()})["FG101"].severity is Severity.HIGH
    wide = torch.sign(torch.randn(16, 64)) * 0.1  # 64 signs never agree by chance: 7 planted rows are caught
    wide[:7] = 0.1
    assert "FG101" in _rules_of({"0.weight": wide, "0.bias": torch.zeros(16)})


def test_fused_attention_projections_are_scanned():
    encoder = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4)
    sd = {k: v.clone() for k, v in encoder.state_dict().items()}
    sd["self_attn.in_proj_weight"][:64] = 1 / 64  # averaging rows planted in the query projection
    found = _rules_of(sd)
    assert found["FG101"].layer == "self_attn.in_proj"


def test_a_transformers_feed_forward_block_in_an_unnamed_list_is_low_only():
    """Unnamed, the default encoder layer's 64 -> 2048 feed-forward block keeps its attention by shape (a [192, 64]
    projection, then [64, 64]): low, as when named (it had been medium, suspicious); the same widening with no
    attention beside it stays medium."""
    from fedguard.loading import name_unnamed

    torch.manual_seed(0)
    encoder = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4)
    found = _rules_of(name_unnamed(list(encoder.state_dict().values())))
    assert found["FG601"].severity is Severity.LOW and judge(list(found.values())) is Verdict.CLEAN
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 64), torch.nn.Linear(64, 10))
    found = _rules_of(name_unnamed(list(mlp.state_dict().values())))
    assert found["FG601"].severity is Severity.MEDIUM and "Check it against the architecture you expect" in (
        found["FG601"].message)  # fmt: skip
    found = run_detectors(InspectContext(view=ModelView.from_state_dict(mlp.state_dict(), mlp)), ["oversized"])[0]
    assert "as wide in the architecture you gave (--arch)" in found[0].message  # with --arch, not asked for again
    narrow = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.Linear(64, 10))
    found = run_detectors(InspectContext(view=ModelView.from_state_dict(mlp.state_dict(), narrow)), ["oversized"])[0]
    assert "has no layer of this shape here (FG701" in found[0].message  # not "as wide" beside FG701's other shape


def test_a_recurrent_layers_input_weights_are_scanned():
    torch.manual_seed(0)
    for rnn in (torch.nn.GRU(64, 32, bidirectional=True), torch.nn.LSTM(64, 32, num_layers=2)):
        assert judge(static_findings(rnn.state_dict())) is Verdict.CLEAN
    sd = {k: v.clone() for k, v in torch.nn.GRU(64, 32).state_dict().items()}
    sd["weight_ih_l0"][:] = torch.rand(64)  # an imprint's identical rows, with a ladder of biases
    sd["bias_ih_l0"][:] = torch.linspace(-1, 1, 96)
    found = _rules_of(sd)
    assert found["FG301"].layer == "ih_l0" and judge(list(found.values())) is Verdict.MALICIOUS


@pytest.mark.parametrize("scale, bias", [(1e-2, 8.0), (0.06, 20.0), (0.2, 20.0)])
def test_class_fishing_with_shrunk_rows_and_moderate_biases(scale, bias):
    """Rows shrunk to 6 % with biases of 20 (past the old 5 % cut) still isolate the target class 18x."""
    torch.manual_seed(0)
    head = torch.nn.Linear(84, 10)
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    keep = torch.arange(10) != 3
    sd["weight"][keep] *= scale
    sd["bias"][keep] = bias
    assert "FG201" in _rules_of(sd)
    assert judge(static_findings(sd)) is Verdict.MALICIOUS


@pytest.mark.parametrize("attack, fishing", [("class_fishing", "class"), ("feature_fishing", "feature"), ("loki", "planted")])
def test_fg201_names_the_craft(attack, fishing):
    """Feature fishing mutes the other classes as class fishing does (one weight left: FG202 has nothing to compare
    with) and LOKI's bins are muted units inside the network: each is named for what it is, not 'class fishing'."""
    from fedguard.architectures import build_model
    from fedguard.attacks.craft import craft

    torch.manual_seed(0)
    crafted = craft(attack, build_model("lenet"), input_shape=(3, 32, 32), seed=0)
    findings = [f for f in static_findings(crafted.state_dict()) if f.rule_id == "FG201"]
    assert findings and {f.evidence["fishing"] for f in findings} == {fishing}
    assert all(("Class fishing" in f.title) == (fishing == "class") for f in findings)


def test_log_prior_biases_on_rows_training_barely_moved_are_not_class_fishing():
    """A language model's head from zeros with log-unigram biases: its rare words' rows stay small (under a quarter
    of the largest) beside biases of -9 to -12 (an honest sweep: 114 of 5,000), below every frequent word's; such
    classes are never predicted and mute nothing. The same rows with biases above the weighted ones' fish."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.cat([torch.randn(20, 64, generator=gen) / 8, torch.randn(180, 64, generator=gen) / 200])
    prior = torch.cat([-torch.linspace(2.0, 5.0, 20), -torch.linspace(9.0, 12.0, 180)])
    assert "FG201" not in _rules_of({"weight": weight, "bias": prior})
    assert "FG201" in _rules_of({"weight": weight, "bias": torch.cat([prior[:20], torch.full((180,), 9.0)])})


@pytest.mark.parametrize("gap", [3.0, 1.0])
def test_class_fishing_with_copies_of_one_row_in_place_of_zeros(gap):
    """A red team's head: every non-target row one honest-looking row with one bias, the target's bias ``gap`` below
    it. The softmax reads only differences, so this is zeroed rows above the target: below the head the target's
    examples gave 96-97 % of the gradient at a gap of 3, and it had read clean (no row was muted). A gap under
    BIAS_MARGIN mutes too little to read as fishing."""
    torch.manual_seed(0)
    head = torch.nn.Linear(84, 10)
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    sd["weight"][1:], sd["bias"][1:], sd["bias"][0] = sd["weight"][1], 0.0, -gap
    sd["weight"][1:] += 0.01 * sd["weight"][1].norm() / 84**0.5 * torch.randn(9, 84)  # 1 % noise on each copy
    found = _rules_of(sd)
    fished = gap >= 2
    assert ("FG201" in found) == fished
    assert judge(list(found.values())) is (Verdict.MALICIOUS if fished else Verdict.CLEAN)


def test_one_constant_reject_logit_is_not_class_fishing():
    """A K+1 head: ten trained rows and one zero row with bias 3 above every class's; nothing is isolated."""
    torch.manual_seed(0)
    head = torch.nn.Linear(84, 11)
    sd = {k: v.clone() for k, v in head.state_dict().items()}
    sd["weight"][10], sd["bias"][10] = 0.0, 3.0
    assert "FG201" not in _rules_of(sd)
    sd["weight"][5:10], sd["bias"][5:10] = 0.0, 3.0  # half the classes muted above the rest: fishing
    assert "FG201" in _rules_of(sd)


def test_trap_weights_with_a_different_factor_per_row():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for factor in torch.empty(64).uniform_(0.85, 0.99, generator=gen):
        w = torch.randn(256, generator=gen).abs() * 0.1
        sign = torch.ones(256)
        sign[torch.randperm(256, generator=gen)[:128]] = -1
        w = w * sign
        w[w > 0] *= factor * w[w < 0].abs().sum() / w[w > 0].sum()
        rows.append(w)
    sd = {"fc.weight": torch.stack(rows), "fc.bias": torch.zeros(64), "out.weight": torch.randn(10, 64) * 0.1}
    assert "FG401" in _rules_of(sd)


def test_trap_rows_among_honest_rows_are_caught():
    """Every other row of a crafted trap layer back at its honest init: the trap half still leaks single samples."""
    entry = next(e for e in crafted_entries() if e.kind == "trap_weights" and e.state_dict[next(iter(e.state_dict))].ndim == 2)
    sd = {k: v.clone() for k, v in entry.state_dict.items()}
    name = next(k for k in sd if k.endswith("weight"))
    torch.manual_seed(0)  # the honest rows were whatever the tests before had left the generator at
    honest = torch.nn.Linear(sd[name].shape[1], sd[name].shape[0])
    sd[name][::2] = honest.weight.detach()[::2]
    found = _rules_of(sd)["FG401"]
    # an honest row whose ratio falls within FG401's 0.2 % of the traps' own is counted with them: 0-2 of the 128
    # over seeds 0-7 (the finding is the traps'; honest layers alone have no such group: benign spread >= 5.8 %)
    traps = sd[name].shape[0] // 2
    assert traps <= found.evidence["rows"] <= traps + 2 and found.message.startswith(f"{found.evidence['rows']} of the")


def test_a_zero_initialised_heads_unseen_classes_are_one_row_not_trap_rows():
    """Trained from zeros on 10 of 100 classes, the 90 classes no example showed get one update each and stay one
    row, sharing whatever ratio it has (below 1 for a head whose input takes both signs: a transformer's, 0.60-0.88;
    an LSTM language model's 4,328 of 5,000 rows at 0.93). In the last layer (logits: no ReLU follows) copies count
    once, with one bias or not, not as 90 trap rows among honest ones; trap rows drawn apart with that ratio still
    do, and so do copies inside the network with a ladder of biases."""
    gen = torch.Generator().manual_seed(0)
    unseen = torch.randn(64, generator=gen)
    unseen[unseen > 0] *= 0.8 * unseen[unseen < 0].abs().sum() / unseen[unseen > 0].sum()
    head = {"weight": torch.cat([torch.randn(10, 64, generator=gen), unseen.repeat(90, 1)]), "bias": torch.zeros(100)}
    assert "FG401" not in _rules_of(head)
    traps = torch.randn(90, 64, generator=gen)
    for row in traps:  # per row, the positives rescaled to 0.8 of the negatives' mass: rows apart, one ratio
        row[row > 0] *= 0.8 * row[row < 0].abs().sum() / row[row > 0].sum()
    head["weight"][10:] = traps
    assert "FG401" in _rules_of(head)
    # inside the network, 14 trap rows stored three times each, scaled by 0.99-1.01 with a ladder of biases (a
    # review's evasion: each copy fires at its own threshold, 10-13 of 64 digits rebuilt against 7-11) count each
    hidden = torch.cat([(traps[:14, None] * torch.tensor([1.0, 1.01, 0.99])[:, None]).reshape(42, 64),
                        torch.randn(58, 64, generator=gen)])  # fmt: skip
    model = {"0.weight": hidden, "0.bias": torch.cat([-torch.linspace(0.5, 2.0, 42), torch.zeros(58)]),
             "2.weight": torch.randn(10, 100, generator=gen) / 10, "2.bias": torch.zeros(10)}  # fmt: skip
    assert _rules_of(model)["FG401"].layer == "0" and _rules_of(model)["FG401"].evidence["rows"] >= 42
    stored_last = {k: model[k] for k in ("2.weight", "2.bias", "0.weight", "0.bias")}  # the file's order is the server's
    assert _rules_of(stored_last)["FG401"].layer == "0"  # still read by a layer as wide: not the logits
    # a second branch joined with it, the head as wide as both: "0" stored last, read by no layer as wide, looks like
    # the logits (a red team's evasion: 7-12 of 64 digits rebuilt against 5-8)
    branch = {"1.weight": torch.randn(100, 64, generator=gen), "1.bias": torch.zeros(100),
              "2.weight": torch.randn(10, 200, generator=gen) / 10, "2.bias": torch.zeros(10),
              "0.weight": model["0.weight"], "0.bias": model["0.bias"]}  # fmt: skip
    assert _rules_of(branch)["FG401"].layer == "0"  # groups of 3 copies with a ladder count each, logits or not
    model["0.bias"][:42] = 0.0  # copies that switch together count once: 14 rows of a trap
    assert "FG401" not in _rules_of(model)


def test_identity_init_alone_is_suspicious_not_malicious():
    layer = torch.nn.Linear(128, 128)
    torch.nn.init.eye_(layer.weight)
    sd = {"0.weight": torch.randn(128, 784) * 0.03, "0.bias": torch.zeros(128), **{f"2.{k}": v for k, v in layer.state_dict().items()}}
    findings = static_findings(sd)
    assert {f.rule_id for f in findings} == {"FG102"}
    assert judge(findings) is Verdict.SUSPICIOUS


def _noisy_opposite_pairs(merge: bool) -> dict:
    """An MLP whose first layer holds 5 pairs ``w``, ``-w + noise`` (cosine about -0.9), merged or not by the next."""
    gen = torch.Generator().manual_seed(0)
    first = (torch.rand(64, 256, generator=gen) * 2 - 1) / 16
    second = (torch.rand(32, 64, generator=gen) * 2 - 1) / 8
    for j in range(5):
        a, b = 2 * j, 2 * j + 1
        first[b] = -first[a] + torch.randn(256, generator=gen) * 0.3 / 16
        if merge:
            second[:, [a, b]] = torch.randn(32, 2, generator=gen) * 0.02 / 8
            second[j, [a, b]] = 1 / 8
    return {"0.weight": first, "0.bias": torch.zeros(64), "2.weight": second, "2.bias": torch.zeros(32),
            "4.weight": torch.randn(10, 32, generator=gen) / 6, "4.bias": torch.zeros(10)}


def test_nearly_opposite_pairs_are_caught_when_the_next_layer_merges_them():
    found = {f.rule_id: f for f in static_findings(_noisy_opposite_pairs(merge=True))}
    assert found["FG104"].severity is Severity.HIGH
    assert found["FG104"].evidence["merged_by_next_layer"] == 5
    assert "FG104" not in _rules_of(_noisy_opposite_pairs(merge=False))


@pytest.mark.parametrize("seed", [1, 5])
def test_a_layer_that_collapsed_in_honest_training_is_not_opposite_pairs(seed):
    """Stride-2 LeNet-5 after 3 epochs of SGD at lr 0.05 with momentum 0.9 (31-37 % accuracy on digits): its
    classifier.2 holds rows along one direction and its opposite that one unit of classifier.4 takes in, and FG104 had
    called 8 such pairs malicious (seed 1) and 1 suspicious (seed 5). Each pair had third rows as opposite (-0.78 to
    -0.86), where MKOR's pairs have none below -0.17; the same model crafted by MKOR stays caught."""
    from fedguard.architectures import build_model
    from fedguard.attacks.craft import craft

    x, y = digits((1, 28, 28))
    torch.manual_seed(seed)
    model = build_model("lenet5_stride2", 10)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    for _ in range(3):
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y), 64):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[perm[i : i + 64]]), y[perm[i : i + 64]]).backward()
            optimiser.step()
    findings = static_findings({k: v.detach() for k, v in model.state_dict().items()})
    assert "FG104" not in {f.rule_id for f in findings}, [f.message for f in findings]
    crafted = craft("mkor_inconspicuous", model, input_shape=(1, 28, 28), seed=seed)
    assert "FG104" in _rules_of(crafted.state_dict())


def _relayout(state_dict, layout):
    """``state_dict`` with every weight of two or more dimensions saved as ``layout`` saves it."""
    out = {}
    for key, value in state_dict.items():
        if not (key.endswith(".weight") and value.ndim >= 2):
            out[key] = value
        elif layout == "pruned":  # torch.nn.utils.prune
            out[key + "_orig"], out[key + "_mask"] = value, torch.ones_like(value)
        elif layout == "weight_norm":  # torch.nn.utils.parametrizations.weight_norm
            stem = key[: -len(".weight")]
            g = value.flatten(1).norm(dim=1).reshape(-1, *[1] * (value.ndim - 1))
            out[f"{stem}.parametrizations.weight.original0"], out[f"{stem}.parametrizations.weight.original1"] = g, value
        else:  # renamed
            out[key[: -len("weight")] + "kernel"] = value
    return out


@pytest.mark.parametrize("layout", ["pruned", "weight_norm"])
def test_pruned_and_weight_normalised_layouts_are_checked_as_their_weights(layout):
    """Saved as prune or weight_norm save them, crafted layers are still caught and honest ones still clean."""
    for entry in [e for e in crafted_entries() if e.kind in ("imprint", "class_fishing")][:2]:
        findings = static_findings(_relayout(entry.state_dict, layout))
        assert judge(findings) is Verdict.MALICIOUS and EXPECTED[entry.kind] & {f.rule_id for f in findings}
    for entry in benign_entries()[:4]:
        findings = static_findings(_relayout(entry.state_dict, layout))
        assert judge(findings) is Verdict.CLEAN and not findings, [(f.rule_id, f.message) for f in findings]


def _input_major(state_dict):
    """``state_dict`` with every 2-D weight saved as ``NAME.W`` in the layout ``x @ W`` uses (transposed) and its
    bias as ``NAME.B``."""
    out = {}
    for key, value in state_dict.items():
        stem, _, leaf = key.rpartition(".")
        weight = state_dict.get(f"{stem}.weight")
        if weight is None or weight.ndim != 2 or leaf not in ("weight", "bias"):
            out[key] = value
        else:
            out[f"{stem}.W" if leaf == "weight" else f"{stem}.B"] = value.t().contiguous() if leaf == "weight" else value
    return out


@pytest.mark.parametrize("layout", ["renamed", "input_major"])
def test_layers_under_other_names_are_read_as_layers(layout):
    """A layer saved under names of the server's choosing (``kernel``, ``W``/``B``, stored transposed) is checked as
    a layer: each crafter's models are still caught by their own rule, honest ones stay clean (the whole zoo, both
    layouts: no verdict changes; docs/detectors.md FG003)."""
    relayout = _input_major if layout == "input_major" else (lambda sd: _relayout(sd, "renamed"))
    for kind in ("imprint", "class_fishing", "trap_weights", "mkor", "mkor_inconspicuous", "loki"):
        for entry in [e for e in crafted_entries() if e.kind == kind][:2]:
            findings = static_findings(relayout(entry.state_dict))
            assert judge(findings) is Verdict.MALICIOUS and EXPECTED[kind] & {f.rule_id for f in findings}, entry.label
            read = next(f for f in findings if f.severity is Severity.INFO).evidence["read_as_layers"]  # said so
            assert read and all(("input-major" in how) is (layout == "input_major") for how in read.values())
    for entry in benign_entries()[::6]:
        findings = static_findings(relayout(entry.state_dict))
        assert judge(findings) is Verdict.CLEAN and {f.rule_id for f in findings} <= {"FG003"}, entry.label


def test_a_layer_with_swapped_names_or_a_leading_dimension_of_one_is_read_as_a_layer():
    """``imp.weight`` the ladder of biases and ``imp.bias`` the imprint's rows (read as a norm layer, no check had
    looked at the rows and the file raised nothing), or the rows stored as ``(1, 128, 64)`` beside their bias (left
    as a positional embedding's shape: FG003 low, clean); either way round. A ``(1, tokens, width)`` tensor with no
    bias as long as its rows stays a positional embedding."""
    rows, ladder = torch.full((128, 64), 1 / 64), torch.linspace(-1, 1, 128)
    benign = benign_entries()[0].state_dict
    for kernel in (rows, rows.t().contiguous()):
        for planted in ({"imp.weight": ladder, "imp.bias": kernel}, {"imp.kernel": kernel[None], "imp.bias": ladder}):
            findings = static_findings({**benign, **planted})
            assert judge(findings) is Verdict.MALICIOUS and {"FG101", "FG301"} <= {f.rule_id for f in findings}
    for alone in ({"imp.kernel": rows[None]}, {"encoder.pos_embedding": torch.randn(1, 17, 32)}):
        findings = static_findings({**benign, **alone})
        assert [(f.rule_id, f.severity) for f in findings] == [("FG003", Severity.LOW)]


class _Dense(nn.Module):
    """A linear layer kept as bare parameters ``W`` and ``b``, stored output- or input-major."""

    def __init__(self, n_in: int, n_out: int, input_major: bool):
        super().__init__()
        weight = nn.Linear(n_in, n_out).weight.detach()
        self.input_major = input_major
        self.W = nn.Parameter(weight.t().contiguous() if input_major else weight.clone())
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return (x @ self.W if self.input_major else x @ self.W.t()) + self.b


class _Tokens(nn.Module):
    """Bare parameters as attention models keep them: a class token and positional embedding beside each other, a
    latent array of queries, a relative-position table (with its index buffer) and a mask token, each alone in its
    module; zero-initialised or at N(0, 0.02)."""

    def __init__(self, zero: bool):
        super().__init__()
        start = torch.zeros if zero else (lambda *shape: torch.randn(*shape) * 0.02)
        self.cls_token, self.pos_embed = nn.Parameter(start(1, 1, 32)), nn.Parameter(start(1, 17, 32))
        self.embed, self.norm, self.head = nn.Linear(4, 32), nn.LayerNorm(32), nn.Linear(8 * 32, 10)
        self.latents, self.attn, self.mask = nn.Module(), nn.Module(), nn.Module()
        self.latents.q = nn.Parameter(start(8, 32))
        self.attn.relative_position_bias_table = nn.Parameter(start(49, 4))
        self.attn.register_buffer("relative_position_index", torch.arange(16).reshape(4, 4))
        self.mask.token = nn.Parameter(start(1, 32))

    def forward(self, x):
        t = torch.cat([self.cls_token.expand(len(x), -1, -1), self.embed(x.reshape(len(x), 16, 4))], 1) + self.pos_embed
        rel = self.attn.relative_position_bias_table[self.attn.relative_position_index.flatten()]  # 16 x 4 heads
        q = self.latents.q.reshape(8, 4, 8).transpose(0, 1)
        k = t.reshape(len(x), 17, 4, 8).permute(0, 2, 1, 3)
        scores = q @ k.transpose(2, 3) / 8**0.5 + nn.functional.pad(rel.t().reshape(4, 1, 16), (1, 0))
        out = (torch.softmax(scores, -1) @ k).permute(0, 2, 1, 3).reshape(len(x), 8, 32)
        return self.head(self.norm(out + self.latents.q + self.mask.token).flatten(1))


def _honest_bare_parameter_models():
    """(label, module): MLPs of bare parameters in both layouts, attention-style bare parameters, (I)RNNs."""
    class BareMLP(nn.Sequential):
        def __init__(self, input_major):
            super().__init__(nn.Flatten(), _Dense(64, 64, input_major), nn.ReLU(), _Dense(64, 64, input_major),
                             nn.ReLU(), _Dense(64, 10, input_major))

    class Recurrent(nn.Module):
        def __init__(self, identity):
            super().__init__()
            self.rnn, self.head = nn.RNN(8, 32, batch_first=True), nn.Linear(32, 10)
            if identity:  # IRNN (Le et al. 2015)
                with torch.no_grad():
                    self.rnn.weight_hh_l0.copy_(torch.eye(32)), self.rnn.bias_hh_l0.zero_()

        def forward(self, x):
            return self.head(self.rnn(x.reshape(len(x), 8, 8))[0][:, -1])

    makers = {"bare/output-major": lambda: BareMLP(False), "bare/input-major": lambda: BareMLP(True),
              "tokens/normal": lambda: _Tokens(False), "tokens/zero": lambda: _Tokens(True),
              "rnn": lambda: Recurrent(False), "irnn": lambda: Recurrent(True)}  # fmt: skip
    for label, make in makers.items():
        for seed in range(2):
            torch.manual_seed(seed)
            yield f"{label}/init{seed}", make()


def test_honest_bare_parameters_stay_clean():
    """Honest models that keep bare parameters (read as layers when alone in their module, left to FG003 otherwise)
    are clean at initialisation, trained with Adam on digits, and in fp16 (measured: none above low)."""
    x, y = digits((1, 8, 8))
    for label, model in _honest_bare_parameter_models():
        states = {label: model.state_dict()}
        if label.endswith("init0"):
            train_with_adam(model, x, y, epochs=12, seed=0, lr=1e-2)
            assert (model(x).argmax(1) == y).float().mean() > 0.8, label
            states[f"{label}/trained"] = trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
            states[f"{label}/trained/fp16"] = {k: v.half() if v.is_floating_point() else v for k, v in trained.items()}
        for name, state in states.items():
            findings = static_findings(state)
            assert judge(findings) is Verdict.CLEAN and {f.rule_id for f in findings} <= {"FG003"}, (
                name, [(f.rule_id, f.layer) for f in findings])


def test_a_mamba_state_matrix_is_not_read_as_a_layer():
    """Mamba's ``A_log`` rows are all ``log(1..N)`` at initialisation and stay alike in training; beside its ``D``
    it would read as an imprint layer (FG301 high). It is left to FG003, at initialisation and moved by training."""
    torch.manual_seed(0)
    d_model, d_inner, d_state = 64, 128, 16
    for moved in (0.0, 0.05):
        a_log = torch.log(torch.arange(1, d_state + 1).float()).repeat(d_inner, 1)
        mixer = {"A_log": a_log + moved * torch.randn_like(a_log), "D": torch.ones(d_inner) + moved * torch.randn(d_inner),
                 "in_proj.weight": torch.randn(2 * d_inner, d_model) * 0.05,
                 "conv1d.weight": torch.randn(d_inner, 1, 4) * 0.3, "conv1d.bias": torch.zeros(d_inner),
                 "x_proj.weight": torch.randn(4 + 2 * d_state, d_inner) * 0.05,
                 "dt_proj.weight": torch.randn(d_inner, 4) * 0.3, "dt_proj.bias": torch.randn(d_inner),
                 "out_proj.weight": torch.randn(d_model, d_inner) * 0.05}  # fmt: skip
        state = {f"layers.0.mixer.{k}": v for k, v in mixer.items()}
        findings = static_findings({**state, "norm.weight": torch.ones(d_model), "head.weight": torch.randn(10, d_model)})
        assert [(f.rule_id, f.severity) for f in findings] == [("FG003", Severity.LOW)], [f.message for f in findings]
        assert findings[0].evidence["tensors"] == ["layers.0.mixer.A_log"]


@pytest.mark.parametrize("dim, positions", [(8, 64), (32, 128), (64, 2048)])
def test_fixed_tables_and_stacked_biases_are_not_read_as_layers(dim, positions):
    """Rotary caches (rows ``t * inv_freq``, parallel, with ``inv_freq`` as long as their columns) and a sinusoidal
    ``pe`` beside honest layers had read as an input-major layer with a bias (FG301, FG502: malicious); a 2-D
    ``down_proj_bias`` of stacked experts (group ``down_proj``, leaf ``bias``) as a weight. All stay FG003 low."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
    freqs = torch.outer(torch.arange(positions).float(), inv_freq)
    emb = torch.cat([freqs, freqs], -1)
    tables = [{"rotary.inv_freq": inv_freq, "rotary.freqs": freqs},
              {"rotary.inv_freq": inv_freq, "rotary.cos_cached": emb.cos(), "rotary.sin_cached": emb.sin()},
              {"rotary.freqs": freqs}, {"rotary.inv_freq": inv_freq, "rotary.cos": freqs.cos()},
              {"encoding.pe": torch.cat([emb.sin(), emb.cos()], -1)},
              {"experts.down_proj_bias": torch.zeros(4, dim)}]  # fmt: skip
    benign = benign_entries()[0].state_dict
    for extra in tables:
        for cast in (torch.float32, torch.float16):
            findings = static_findings({**benign, **{k: v.to(cast) for k, v in extra.items()}})
            assert {(f.rule_id, f.severity) for f in findings} <= {("FG003", Severity.LOW)}, (list(extra), findings)


def test_an_orthogonal_layer_is_not_read_by_its_generator():
    """``parametrizations.orthogonal`` stores the skew-symmetric generator as ``original`` beside ``0.base``; read as
    the weight, an honest layer was MKOR's pass-through (FG102) at init and a fishing row (FG202) once trained."""
    from torch.nn.utils.parametrizations import orthogonal

    x, y = digits((1, 8, 8))
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), orthogonal(nn.Linear(64, 64)), nn.ReLU(), nn.Linear(64, 10))
        states = [model.state_dict()]
        if seed == 0:
            train_with_adam(model, x, y, epochs=2, seed=0)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        for state in states:
            findings = static_findings(state)
            assert {(f.rule_id, f.severity) for f in findings} <= {("FG003", Severity.LOW)}, findings


def test_weights_under_unknown_names_are_not_passed_as_clean():
    """Weights that cannot be read as layers (several 2-D tensors in one module): with no layer recognised, nothing
    was checked, so FG003 at medium (suspicious); beside recognised layers: low."""
    torch.manual_seed(0)
    bare = {"W1": torch.randn(64, 64), "b1": torch.zeros(64), "W2": torch.randn(10, 64), "b2": torch.zeros(10)}
    findings = static_findings(bare)
    assert [(f.rule_id, f.severity) for f in findings] == [("FG003", Severity.MEDIUM)]
    assert judge(findings) is Verdict.SUSPICIOUS
    benign = benign_entries()[0].state_dict
    findings = static_findings({**benign, "extra.W1": torch.randn(8, 8), "extra.W2": torch.randn(8, 8)})
    assert [(f.rule_id, f.severity) for f in findings] == [("FG003", Severity.LOW)] and judge(findings) is Verdict.CLEAN
    assert findings[0].evidence["tensors"] == ["extra.W1", "extra.W2"]


def _one_channel_conv_net(seed: int, convolutions: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU()]
    layers += [torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()] * (convolutions - 1)
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(8 * 12 * 12, 10))


@pytest.mark.parametrize("convolutions", [1, 2])
def test_a_pass_through_stack_on_one_input_channel_is_caught(convolutions):
    """MKOR's inconspicuous form on a one-channel image plants two filters per convolution (a copy and a min, then
    copies of both): FG105 counts them, and a lone convolution with a copy and a min filter of one tap too (no
    Dirac stem reads a tap with both signs); the same networks at init and trained stay clean."""
    from fedguard.attacks.craft import craft

    for seed in range(3):
        honest = _one_channel_conv_net(seed, convolutions)
        crafted = craft("mkor_inconspicuous", honest, input_shape=(1, 12, 12), num_classes=10, seed=seed)
        findings = static_findings(crafted.state_dict())
        assert "FG105" in {f.rule_id for f in findings} and judge(findings) is Verdict.MALICIOUS
        assert not static_findings(honest.state_dict())
        x, y = digits((1, 12, 12))
        optimiser = torch.optim.SGD(honest.parameters(), lr=0.05)
        for _ in range(30):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(honest(x[:128]), y[:128]).backward()
            optimiser.step()
        assert not static_findings(honest.state_dict())


class _BareParameters(torch.nn.Module):
    """An MLP whose weights are bare parameters, not nn.Linear layers: nothing a weight check reads."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = torch.nn.Parameter(torch.randn(16, 64) * 0.1), torch.nn.Parameter(torch.zeros(16))
        self.w2, self.b2 = torch.nn.Parameter(torch.randn(10, 16) * 0.1), torch.nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return torch.relu(x.flatten(1) @ self.w1.T + self.b1) @ self.w2.T + self.b2


def test_an_architecture_of_bare_parameters_is_told_to_use_torch_layers():
    """With the module that holds them, FG003 says why --arch did not help: the architecture has no torch layers."""
    module = _BareParameters()
    view = ModelView.from_state_dict(module.state_dict(), module)
    (finding,) = run_detectors(InspectContext(view=view), None)[0]
    assert finding.rule_id == "FG003" and finding.severity is Severity.MEDIUM
    assert "holds them as bare parameters" in finding.message and "use --arch" not in finding.message


def test_unscored_tensors_of_the_given_architecture_are_not_sent_back_to_arch():
    """An LSTM's recurrent weights stay unscored (FG003 low); with --arch the finding says FG701 compared them
    instead of telling the user to give the --arch they gave."""
    module = torch.nn.LSTM(64, 32)
    for given in (None, module):
        (finding,) = run_detectors(InspectContext(view=ModelView.from_state_dict(module.state_dict(), given)), None)[0]
        assert finding.rule_id == "FG003" and finding.severity is Severity.LOW
        assert ("use --arch" in finding.message) is (given is None), finding.message


def test_odd_layouts_fold_or_stay_visible_without_crashing():
    """Old spectral norm folds; a second layout beside a stored weight is FG003, not folded over the weight;
    scalar weight-norm tensors are no layer, and no crash."""
    trap = next(e for e in crafted_entries() if e.kind == "trap_weights").state_dict
    first = next(k for k in trap if k.endswith(".weight") and trap[k].ndim == 2)
    spectral = {(k + "_orig" if k == first else k): v for k, v in trap.items()}
    spectral[first + "_u"], spectral[first + "_v"] = torch.ones(trap[first].shape[0]), torch.ones(trap[first].shape[1])
    assert "FG401" in {f.rule_id for f in static_findings(spectral)}
    both = dict(trap)
    both[first + "_orig"], both[first + "_mask"] = torch.randn_like(trap[first]), torch.ones_like(trap[first])
    findings = static_findings(both)
    assert {"FG401", "FG003"} <= {f.rule_id for f in findings} and judge(findings) is Verdict.MALICIOUS
    assert static_findings({"fc.weight_g": torch.tensor(1.0), "fc.weight_v": torch.tensor(2.0)}) == []


@pytest.mark.parametrize("shape", [(16, 8, 8), (8, 8)])
def test_a_layer_norm_over_several_dimensions_is_no_linear_layer(shape):
    """LayerNorm's affine weight over several dimensions is 2-D or 3-D, all ones at initialisation: read as a Linear
    or conv layer, an honest model had been malicious (FG101 at init, FG301 after training). Its bias has the
    weight's shape, which no Linear or conv layer's bias has, and that bias is the layer's own (no FG003)."""
    torch.manual_seed(0)
    channels = (torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU()) if len(shape) == 3 else ()
    width = math.prod(shape)
    model = torch.nn.Sequential(*channels, torch.nn.LayerNorm(shape), torch.nn.Flatten(), torch.nn.Linear(width, 10))
    x, y = digits((1, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), 0.05)
    for step in range(2):
        if step:
            for start in range(0, 640, 64):
                loss = torch.nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        found = {f.rule_id: f for f in static_findings(model.state_dict())}
        assert not found, {k: f.message for k, f in found.items()}


def test_responses_on_a_model_that_turns_gradients_off_inside_its_forward():
    """A frozen feature extractor run under no_grad inside forward: nothing to read there (nor any update), and the
    check runs on instead of raising that it cannot keep the layer's gradient."""

    class Frozen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.head = torch.nn.Linear(64, 256), torch.nn.Linear(256, 10)

        def forward(self, x):
            with torch.no_grad():
                h = torch.relu(self.features(x.flatten(1)))
            return self.head(h)

    torch.manual_seed(0)
    assert _with_data(Frozen(), (1, 8, 8), ["responses"], n=64) == {}


_CHANNEL_NORM_NET = '''
import torch
from torch import nn


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels at each position, as ConvNeXt's."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def net(num_classes=10, input_shape=(1, 8, 8)):
    conv = nn.Conv2d(input_shape[0], 8, 3, padding=1)
    nn.init.zeros_(conv.bias)  # as ConvNeXt initialises its convolutions
    return nn.Sequential(conv, ChannelNorm(8), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''


def test_fg801_is_low_where_a_fresh_initialisation_of_the_architecture_does_the_same(workdir, monkeypatch):
    """A LayerNorm over channels right after a convolution whose bias starts at zero (ConvNeXt) divides a near-black
    image's gradient by its tiny spread: that example dominates the convolution's bias honestly, and FG801 had called
    an honest torchvision ConvNeXt-T malicious (D-SNR 4.4-5.5 at three initialisations, an independent review). With
    --arch, the same measurement on a fresh initialisation of the architecture tells the two apart: low where it does
    the same, high where the received weights go further (class fishing on the same net: D-SNR 44-67)."""
    import importlib

    from fedguard.attacks.craft import craft
    from fedguard.inspect import inspect_model

    (workdir / "channel_norm_net.py").write_text(_CHANNEL_NORM_NET)
    monkeypatch.syspath_prepend(str(workdir))
    net = importlib.import_module("channel_norm_net").net
    x, y = digits((1, 8, 8))
    x, y = 0.2 + 0.8 * x[:16], y[:16]  # photographs: light everywhere
    x[0] = 0.0005 + 0.0005 * x[0]  # but one, nearly black
    torch.manual_seed(1)
    honest = net()
    unseen = _findings_on(honest, (x, y))  # without the architecture to compare with, as before
    assert unseen["FG801"].severity == Severity.HIGH and unseen["FG801"].evidence["sample"] == 0
    torch.save(honest.state_dict(), workdir / "honest.pt")
    report = inspect_model("honest.pt", arch="channel_norm_net:net", data=(x, y), detectors=["gradient_snr"])
    (found,) = [f for f in report.findings if f.rule_id == "FG801"]
    assert found.severity == Severity.LOW and report.verdict == Verdict.CLEAN
    assert found.evidence["fresh_init_dsnr"] >= 2 and "a fresh initialisation of --arch does the same" in found.message
    torch.save(craft("class_fishing", honest, input_shape=(1, 8, 8)).state_dict(), workdir / "fishing.pt")
    report = inspect_model("fishing.pt", arch="channel_norm_net:net", data=(x, y), detectors=["gradient_snr"])
    (found,) = [f for f in report.findings if f.rule_id == "FG801"]
    assert found.severity == Severity.HIGH and report.verdict == Verdict.MALICIOUS and found.evidence["dsnr"] > 20


def _findings_on(module, data, detectors=("gradient_snr",)):
    context = InspectContext(view=ModelView.from_state_dict(module.state_dict(), module), data=data)
    return {f.rule_id: f for f in run_detectors(context, list(detectors))[0]}


def test_responses_are_read_in_chunks_as_in_one_pass(monkeypatch):
    """The examples go through in chunks (autograd keeps every layer's activations: 64 photographs at 224x224 had
    taken ConvNeXt-T to 9.6 GB); in eval mode the chunks give what one pass gives, and a model whose only Linear layer
    is its head is not run with gradients at all."""
    from fedguard.architectures import build_model
    from fedguard.detectors import linear_passes

    x, y = digits((1, 8, 8))
    x, y = x[:40], y[:40]
    torch.manual_seed(0)
    mlp = build_model("mlp", 10, (1, 8, 8))
    monkeypatch.setattr(linear_passes, "CHUNK", 16)
    chunked = linear_passes.linear_layers_seen(mlp, x, y)
    monkeypatch.setattr(linear_passes, "CHUNK", 1000)
    whole = linear_passes.linear_layers_seen(mlp, x, y)
    assert [s.name for s in chunked] == [s.name for s in whole] == ["1", "3"]
    monkeypatch.setattr(linear_passes, "ACTIVATIONS", 4096)  # what autograd keeps for two examples sets the chunks
    assert 1 <= linear_passes._chunk_size(mlp, x) < 16
    for a, b in zip(linear_passes.linear_layers_seen(mlp, x, y), whole):
        torch.testing.assert_close(a.grad, b.grad)
    for a, b in zip(chunked, whole):
        assert a.inputs.shape == (40, a.layer.in_features) and a.grad.shape == (40, a.layer.out_features)
        torch.testing.assert_close(a.inputs, b.inputs)
        torch.testing.assert_close(a.grad, b.grad)
        assert torch.equal(a.grad != 0, b.grad != 0)  # which units each example reaches: what FG803 counts
    passes = []
    real = linear_passes._linear_calls
    monkeypatch.setattr(linear_passes, "_linear_calls", lambda *a: passes.append(a[3] is not None) or real(*a))
    assert linear_passes.linear_layers_seen(build_model("resnet18", 10, (3, 32, 32)), torch.rand(4, 3, 32, 32),
                                        torch.arange(4)) == [] and passes == [False]  # fmt: skip


def test_fg801_keeps_its_severity_when_the_fresh_architecture_cannot_be_built_or_goes_less_far():
    """A fresh build that raises leaves the received model judged alone (it had turned the whole inspection into an
    input error), and class isolation is low only when the received model silences at most 2 more of the 16
    examples everywhere than the fresh one does (any isolation in the fresh model had made it low)."""
    x, y = digits((1, 8, 8))
    x, y = x[:16], y[:16]
    brightness = x.flatten(1).sum(1)

    def gate(share):  # every hidden unit on only for the brightest examples: the rest send nothing below the head
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        with torch.no_grad():
            net[1].weight.fill_(1.0)
            net[1].bias.fill_(-float(torch.quantile(brightness, share)))
        return net

    def failing():
        raise RuntimeError("weights cache already in use")

    for received, fresh, severity in ((gate(0.7), failing, Severity.HIGH), (gate(0.7), lambda: gate(0.55), Severity.LOW),
                                      (gate(0.8), lambda: gate(0.55), Severity.HIGH)):  # fmt: skip
        context = InspectContext(view=ModelView.from_state_dict(received.state_dict(), received), data=(x, y), fresh=fresh)
        (found,) = [f for f in run_detectors(context, ["gradient_snr"])[0] if f.rule_id == "FG801"]
        assert found.title.startswith("Most of the batch is silent") and found.severity == severity
        assert ("fresh_init_silent_everywhere" in found.evidence) == (severity == Severity.LOW)


def test_what_detectors_share_on_a_layer_lasts_one_run():
    """A caller that keeps a view of a model's state_dict and runs the detectors again after the weights changed in
    place is told what the weights are now (the rows' sketch had been kept from the first run: clean)."""
    from fedguard.architectures import build_model

    torch.manual_seed(0)
    model = build_model("mlp")
    context = InspectContext(view=ModelView.from_state_dict(model.state_dict(), model))
    assert judge(run_detectors(context)[0]) == Verdict.CLEAN
    with torch.no_grad():  # next round's weights, copied in: an imprint in the second layer
        model[3].weight.copy_(model[3].weight[0].abs().repeat(model[3].weight.shape[0], 1))
        model[3].bias.copy_(-torch.linspace(0, 1, model[3].weight.shape[0]))
    assert "FG301" in {f.rule_id for f in run_detectors(context)[0]}
    assert all(not layer.shared for layer in context.view.layers)


# ---------------------------------------------------------------------- thresholds at their boundaries


def _set_head_bias(value):
    def edit(m):
        m[2].bias[3] = value
    return edit


def _constant_rows(count):
    def edit(m):
        m[0].weight[:count] = 1 / 64  # MKOR's averaging rows
    return edit


def _muted_head_rows(count, bias):
    def edit(m):
        m[2].weight[:count] = 0
        m[2].bias[:count] = bias
        m[2].bias[count:] = 0
    return edit


def _muted_hidden_rows(count, bias):
    def edit(m):
        m[0].weight[:count] = 0
        m[0].bias[:count] = bias
    return edit


def _identical_rows(count):
    def edit(m):
        m[0].weight[1:count] = m[0].weight[0]
        m[0].bias[:count] = torch.arange(1, count + 1) / 10  # an imprint's ladder of biases
    return edit


def _opposite_pairs(count):
    def edit(m):
        for i in range(count):
            m[0].weight[2 * i + 1] = -m[0].weight[2 * i]
    return edit


@pytest.mark.parametrize("edit, expected, verdict", [
    (lambda m: None, [], Verdict.CLEAN),
    (_set_head_bias(50.0), [("FG502", Severity.HIGH)], Verdict.MALICIOUS),  # BIAS_LIMIT, inclusive
    (_set_head_bias(49.0), [], Verdict.CLEAN),
    (_constant_rows(2), [("FG101", Severity.HIGH), ("FG301", Severity.MEDIUM)], Verdict.MALICIOUS),
    (_constant_rows(1), [("FG101", Severity.MEDIUM)], Verdict.SUSPICIOUS),
    (_muted_head_rows(5, 3.0), [("FG201", Severity.HIGH)], Verdict.MALICIOUS),  # half the classes muted above
    (_muted_head_rows(4, 3.0), [], Verdict.CLEAN),
    (_muted_head_rows(5, 2.0), [("FG201", Severity.HIGH)], Verdict.MALICIOUS),  # BIAS_MARGIN, inclusive
    (_muted_head_rows(5, 1.9), [], Verdict.CLEAN),
    (_muted_head_rows(9, -5.0), [], Verdict.CLEAN),  # below the weighted class: never predicted, mutes nothing
    (_muted_hidden_rows(1, 5.0), [("FG201", Severity.HIGH)], Verdict.MALICIOUS),  # HUGE_BIAS, inclusive
    (_muted_hidden_rows(1, 4.9), [], Verdict.CLEAN),
    (_identical_rows(4), [("FG301", Severity.HIGH)], Verdict.MALICIOUS),
    (_identical_rows(3), [("FG301", Severity.MEDIUM)], Verdict.SUSPICIOUS),
    (_opposite_pairs(2), [("FG104", Severity.HIGH)], Verdict.MALICIOUS),  # MALICIOUS_PAIRS
    (_opposite_pairs(1), [("FG104", Severity.MEDIUM)], Verdict.SUSPICIOUS),
], ids=["honest", "bias-50", "bias-49", "2-constant-rows", "1-constant-row", "half-head-muted", "4-of-10-muted",
        "muted-margin-2", "muted-margin-1.9", "muted-below", "muted-hidden-bias-5", "muted-hidden-bias-4.9",
        "4-identical-rows", "3-identical-rows", "2-opposite-pairs", "1-opposite-pair"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_threshold_holds_at_its_boundary_and_sets_the_verdict(edit, expected, verdict, seed):
    """One planted change to a 64-128-10 MLP just at and just past each static rule's threshold: the rule, its
    severity (high makes the model malicious, medium suspicious) and nothing else."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        edit(model)
    findings = static_findings(model.state_dict())
    assert sorted((f.rule_id, f.severity) for f in findings) == expected
    assert judge(findings) is verdict


def test_fg801_compares_with_the_fresh_architecture_exactly_at_its_factor_and_margin(monkeypatch):
    """Low (the architecture does it) while the received D-SNR is under ARCH_FACTOR times the fresh one's, or at most
    ISOLATION_MARGIN more of the batch is silent everywhere; high from there on."""
    from types import SimpleNamespace

    from fedguard.detectors import gradient_snr

    def measured(kind, dsnr=0.0, isolated=0.0):
        return gradient_snr.Concentration(kind, "0.bias", dsnr, 0, ["0.bias"], 2, 0.5, 0.5, isolated)

    context = SimpleNamespace(fresh=lambda: nn.Linear(4, 2))
    x, y = torch.zeros(16, 4), torch.zeros(16, dtype=torch.long)
    baseline = gradient_snr.GradientSNR._fresh_baseline
    fresh = measured("dominance", dsnr=2.0)
    monkeypatch.setattr(gradient_snr, "concentration", lambda *args: fresh)
    assert baseline(context, x, y, measured("dominance", dsnr=7.99)) is fresh
    assert baseline(context, x, y, measured("dominance", dsnr=8.0)) is None  # ARCH_FACTOR 4
    assert baseline(context, x, y, measured("isolation", isolated=0.625)) is None  # another kind: no baseline
    fresh = measured("isolation", isolated=0.5)
    assert baseline(context, x, y, measured("isolation", isolated=0.5 + 2 / 16)) is fresh
    assert baseline(context, x, y, measured("isolation", isolated=0.5 + 3 / 16)) is None


def test_structure_drift_keeps_each_lists_count_where_it_lists_the_first_fifty():
    """61 tensors missing had been listed as 50 with no count, and the text report's "(50 items)" read as a total."""
    previous = {f"layer{i}.weight": torch.randn(8, 8) for i in range(61)}
    current = {"other.weight": torch.randn(8, 8)}
    found = run_detectors(InspectContext(view=ModelView.from_state_dict(current),
                                         reference=ModelView.from_state_dict(previous)), ["reference_drift"])[0]  # fmt: skip
    drift = next(f for f in found if f.rule_id == "FG702")
    assert len(drift.evidence["missing"]) == 50 and drift.evidence["missing_count"] == 61
    assert "unexpected_count" not in drift.evidence and drift.evidence["unexpected"] == ["other.weight"]


def test_a_wrapping_prefix_holds_every_layer_of_the_architecture_in_its_shape_a_scalar_too():
    """FG701's wrapper: the prefix under which the file has every layer of --arch; a missing 0-d parameter had read
    as present (its shape, ``()``, was the default of the lookup)."""
    from fedguard.detectors.drift import wrapping_prefix

    expected = {"fc.weight": torch.Size([2, 3]), "bn.running_mean": torch.Size([2]), "scale": torch.Size([])}
    assert wrapping_prefix({"imp.w": torch.Size([4]), "m.fc.weight": torch.Size([2, 3]), "m.scale": torch.Size([])}, expected) == "m."
    assert wrapping_prefix({"m.fc.weight": torch.Size([2, 3])}, expected) is None  # the scalar missing
    assert wrapping_prefix({"m.fc.weight": torch.Size([3, 2]), "m.scale": torch.Size([])}, expected) is None  # reshaped
    assert wrapping_prefix({"fc.weight": torch.Size([2, 3]), "scale": torch.Size([])}, expected) is None  # no prefix
    assert wrapping_prefix({"m.x": torch.Size([1])}, {"bn.running_mean": torch.Size([2])}) is None  # nothing to hold
