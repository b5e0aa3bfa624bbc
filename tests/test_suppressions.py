"""``--ignore RULE[:LAYER]``: findings the client accepts are listed apart, not judged, in inspect and audit."""

from __future__ import annotations

import json

import jsonschema
import pytest
from click.testing import CliRunner

from fedguard.cli import main
from fedguard.errors import InputError
from fedguard.inspect import inspect_model, rules
from fedguard.reports import render
from fedguard.reports.base import load_schema
from fedguard.suppressions import Ignore, parse_ignores, split_findings, unmatched
from fedguard.types import Confidence, Finding, Severity, Verdict

from .cli_checks import assert_input_error, assert_no_crash


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def finding(rule_id: str, layer: str | None) -> Finding:
    return Finding(rule_id, "t", Severity.HIGH, Confidence.HIGH, layer, "m")


def _crafted(factory, attack: str):
    path = factory.mktemp(attack) / f"{attack}.pt"
    result = invoke("craft", attack, "--arch", "mlp", "-o", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def imprint_mlp(tmp_path_factory):
    """fedguard's imprint crafted on the MLP: FG101 and FG301 in imprint.0 and imprint.2, all high."""
    return _crafted(tmp_path_factory, "imprint")


@pytest.fixture(scope="module")
def trap_mlp(tmp_path_factory):
    """Trap weights crafted on the MLP as --arch mlp builds it: one FG401 (high) in layer 1."""
    return _crafted(tmp_path_factory, "trap_weights")


def test_entries_parse_by_id_or_name_in_any_case_and_repeat_once():
    parsed = parse_ignores(["fg301", " imprint-identical-rows ", "FG301", "FG803: fc1 ", Ignore("fg101")], rules())
    assert parsed == (Ignore("FG301"), Ignore("FG803", "fc1"), Ignore("FG101"))
    assert [str(i) for i in parsed] == ["FG301", "FG803:fc1", "FG101"]
    assert parse_ignores(None, rules()) == () and parse_ignores("FG502", rules()) == (Ignore("FG502"),)


@pytest.mark.parametrize(("spec", "said"), [
    ("FG3O1", "unknown rule 'FG3O1' (did you mean 'FG301'?)"),
    ("FG301:", "the layer after ':' is empty"),
    ("FG001", "FG001 cannot be ignored: a file it reports would run code when loaded and is refused unread"),
    ("code-importing-pickle", "FG001 cannot be ignored"),
])  # fmt: skip
def test_bad_entries_are_input_errors_that_say_what_to_give(spec, said):
    with pytest.raises(InputError, match=said.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_ignores([spec], rules())


def test_a_layer_entry_matches_that_layer_and_what_is_under_it_only():
    ignore = Ignore("FG301", "features.0")
    assert ignore.matches(finding("FG301", "features.0")) and ignore.matches(finding("FG301", "features.0.weight"))
    assert not ignore.matches(finding("FG301", "features.01"))  # a name that only begins alike
    assert not ignore.matches(finding("FG301", "features")) and not ignore.matches(finding("FG301", None))
    assert not ignore.matches(finding("FG101", "features.0"))
    assert Ignore("FG002").matches(finding("FG002", None))  # a rule alone: file-level findings too


def test_split_keeps_order_and_unmatched_names_stale_entries():
    found = [finding("FG301", "a"), finding("FG101", "a"), finding("FG301", "b")]
    ignores = (Ignore("FG301", "a"), Ignore("FG803"))
    kept, suppressed = split_findings(found, ignores)
    assert kept == [found[1], found[2]] and suppressed == [found[0]]
    assert unmatched(ignores, suppressed) == [Ignore("FG803")]


def test_inspect_judges_what_is_left_and_reports_the_rest_apart(imprint_mlp):
    whole = inspect_model(imprint_mlp)
    assert whole.verdict is Verdict.MALICIOUS and whole.suppressed == ()
    assert {(f.rule_id, f.layer) for f in whole.findings} == {(r, l) for r in ("FG101", "FG301") for l in ("imprint.0", "imprint.2")}

    part = inspect_model(imprint_mlp, ignore=["FG301:imprint.0", "FG101"])
    assert {(f.rule_id, f.layer) for f in part.findings} == {("FG301", "imprint.2")}  # the same rule elsewhere stays
    assert part.verdict is Verdict.MALICIOUS
    assert {(f.rule_id, f.layer) for f in part.suppressed} == {("FG301", "imprint.0"), ("FG101", "imprint.0"), ("FG101", "imprint.2")}
    assert part.config["ignore"] == ["FG301:imprint.0", "FG101"]

    accepted = inspect_model(imprint_mlp, ignore=["FG301", "FG101"])
    assert accepted.verdict is Verdict.CLEAN and accepted.findings == () and len(accepted.suppressed) == 4
    assert accepted.ignore_unmatched == ()
    # an entry that accepts nothing is named from Python too (it had been in the JSON document alone)
    stale = inspect_model(imprint_mlp, ignore=["FG301", "FG105:imprint.0"])
    assert stale.ignore_unmatched == ("FG105:imprint.0",)


def test_reports_list_accepted_findings_apart(imprint_mlp):
    report = inspect_model(imprint_mlp, ignore=["FG301:imprint.0", "FG101"])
    doc = json.loads(render("json", report, rules()))
    jsonschema.validate(doc, load_schema("inspect"))
    assert doc["schema_version"] == "1.5" and doc["verdict"] == "malicious" and doc["ignore_unmatched"] == []
    assert doc["summary"]["high"] == 1 and [f["rule_id"] for f in doc["findings"]] == ["FG301"]
    assert sorted((f["rule_id"], f["layer"]) for f in doc["suppressed"]) == [
        ("FG101", "imprint.0"), ("FG101", "imprint.2"), ("FG301", "imprint.0")]
    assert doc["config"]["ignore"] == ["FG301:imprint.0", "FG101"]

    # SARIF: every finding a result; the accepted ones carry an external suppression naming the entry, and keep the
    # fingerprint they had unsuppressed, so code scanning tracks one alert as dismissed rather than a new one
    sarif = json.loads(render("sarif", report, rules()))["runs"][0]
    whole = json.loads(render("sarif", inspect_model(imprint_mlp), rules()))["runs"][0]
    prints = {(r["ruleId"], r["properties"]["layer"]): r["partialFingerprints"] for r in whole["results"]}
    assert len(sarif["results"]) == 4 and sarif["properties"]["summary"]["high"] == 1
    for result in sarif["results"]:
        key = (result["ruleId"], result["properties"]["layer"])
        assert result["partialFingerprints"] == prints[key]
        if key == ("FG301", "imprint.2"):
            assert "suppressions" not in result
        else:
            entry = "FG301:imprint.0" if key[0] == "FG301" else "FG101"
            assert result["suppressions"] == [{"kind": "external", "status": "accepted",
                                               "justification": f"accepted with fedguard --ignore {entry}"}]

    text = render("text", report, rules())
    assert "ignored with --ignore: FG101 high in imprint.0, FG101 high in imprint.2, FG301 high in imprint.0" in text
    assert text.rstrip().endswith("1 finding: 0 critical, 1 high, 0 medium, 0 low, 0 info")
    html = render("html", report, rules())
    assert "Accepted with --ignore" in html and "FG301:imprint.0 FG101" in html
    assert html.count('<table class="findings">') == 2
    # an entry that matched nothing is not listed as accepting anything: JSON, SARIF and HTML name it apart
    stale = inspect_model(imprint_mlp, ignore=["FG101", "FG101:nonexistent"])
    assert json.loads(render("json", stale, rules()))["ignore_unmatched"] == ["FG101:nonexistent"]
    sarif = json.loads(render("sarif", stale, rules()))["runs"][0]
    assert sarif["invocations"][0]["properties"]["ignoreUnmatched"] == ["FG101:nonexistent"]
    html = render("html", stale, rules())
    assert "Findings the client accepted (FG101)" in html and "matched no finding (stale, or a layer misspelt): FG101:nonexistent" in html


def test_cli_exit_code_follows_what_is_left_and_names_stale_entries(imprint_mlp):
    assert invoke("inspect", imprint_mlp).exit_code == 1
    result = invoke("inspect", imprint_mlp, "--ignore", "FG301", "--ignore", "FG101", "--ignore", "FG803:fc9")
    assert_no_crash(result)
    assert result.exit_code == 0 and result.stdout.startswith("CLEAN")
    assert result.stderr == ("fedguard: note: --ignore FG803:fc9 matched no finding; drop it, or check the rule and "
                             "layer against the report's findings\n")  # fmt: skip
    quiet = invoke("inspect", imprint_mlp, "--ignore", "FG301", "--ignore", "FG101", "--ignore", "FG803", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""
    line = assert_input_error(invoke("inspect", imprint_mlp, "--ignore", "FG001"))
    assert "FG001 cannot be ignored" in line


def test_audit_accepts_inspect_findings_but_not_what_the_attacks_measure(trap_mlp, workdir):
    common = ["audit", "--model", trap_mlp, "--arch", "mlp", "--data", "digits", "--attack", "label_counts",
              "--no-exposure", "--format", "json"]  # fmt: skip
    blocked = invoke(*common)
    assert blocked.exit_code == 1 and json.loads(blocked.stdout)["verdict"] == "block"

    result = invoke(*common, "--ignore", "FG401", "--ignore", "FG301:x")
    assert_no_crash(result)
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, load_schema("audit"))
    assert result.exit_code == 0 and doc["schema_version"] == "1.12" and doc["verdict"] == "pass"
    inspection = doc["model"]["inspection"]
    assert inspection["verdict"] == "clean" and inspection["findings"] == []
    assert inspection["suppressed"] == [{"rule_id": "FG401", "severity": "high", "layer": "1", "title": "Trap weights"}]
    assert inspection["ignore"] == ["FG401", "FG301:x"] and inspection["ignore_unmatched"] == ["FG301:x"]
    assert "--ignore FG301:x matched no finding" in result.stderr
    line = assert_input_error(invoke(*common, "--ignore", "FG803"))  # a data rule the audit does not run
    assert line.endswith("--ignore FG803: the audit does not run FG803 (it reads the received model with the weight "
                         "rules and FG805 only); accept it with fedguard inspect's --ignore, and leave it out of the "
                         "audit's")  # fmt: skip

    text = invoke(*common[:-2], "--ignore", "FG401").stdout
    assert "accepted with --ignore, not judged: fedguard inspect's FG401 high in 1 on the received model" in text
    # an entry that matched nothing is in the report too, not only on stderr (which -q silences)
    quiet = invoke(*common[:-2], "--ignore", "FG401", "--ignore", "FG301:x", "-q", "--format", "html", "-o", "a.html")
    assert quiet.exit_code == 0 and not quiet.stderr
    assert "--ignore entries that matched no finding: FG301:x" in (workdir / "a.html").read_text()
