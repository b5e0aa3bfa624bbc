"""The renderer interface: one small ABC, one registry, shared helpers.

Modelled on pip-audit's ``_format/interface.py``: a renderer turns one
:class:`~fedguard.types.InspectionReport` (plus the static description of every
rule fedguard has) into a string. The CLI picks a renderer by its registry
name (``--format text|json|sarif|html``) and writes the string atomically;
``suffix`` is the file extension it suggests for ``--output``.

Adding a format is one module that subclasses :class:`Renderer`, decorates it
with ``@register_renderer("name")`` and is imported by ``fedguard.reports``.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import datetime as _dt
import enum
import json
import math
import os
import re
import shlex
from typing import Any, ClassVar, Iterable, Mapping

import fedguard
from fedguard.errors import COMMAND_LINE, InputError, kind_of
from fedguard.registry import Registry
from fedguard.types import AuditReport, Finding, InspectionReport, Rule, Severity, Verdict

#: Severities from worst to mildest: the order every renderer lists them in.
SEVERITY_ORDER: tuple[Severity, ...] = tuple(sorted(Severity, reverse=True))


class Renderer(abc.ABC):
    """Turns an inspection report into text in one output format."""

    #: Registry name, also the value of ``--format``.
    name: ClassVar[str]
    #: Suggested file extension for ``--output``, with the dot.
    suffix: ClassVar[str]

    @abc.abstractmethod
    def render(
        self,
        report: InspectionReport,
        rules: Mapping[str, Rule],
        *,
        color: bool = False,
    ) -> str:
        """Return the whole output for ``report``.

        Parameters
        ----------
        report : InspectionReport
            What ``fedguard inspect`` found.
        rules : mapping of str to Rule
            Every rule fedguard has, by rule id (not only those that fired).
        color : bool
            Emit terminal colour codes; only formats meant for a terminal use it.
        """


RENDERERS: Registry[type[Renderer]] = Registry("output format")


def register_renderer(name: str):
    """Class decorator: register a :class:`Renderer` subclass under ``name``."""
    return RENDERERS.register_class(name)


# ---------------------------------------------------------------- shared helpers


def check_format(fmt: Any) -> None:
    """:class:`~fedguard.errors.InputError` unless ``fmt`` is a format's name (a report passed first had raised
    'unhashable type')."""
    if not isinstance(fmt, str):
        raise InputError(f"fmt is {kind_of(fmt)}; pass the format's name first, then the report: ('json', report)")


def check_report(report: Any, kind: type, made_by: str) -> None:
    """:class:`~fedguard.errors.InputError` unless ``report`` is a ``kind`` (what ``made_by`` returns)."""
    if not isinstance(report, kind):
        raise InputError(f"report is {kind_of(report)}; pass the {kind.__name__} that {made_by} returns")


def tool_version(report: InspectionReport | AuditReport) -> str:
    """The fedguard version that produced ``report`` (this one when unset: a report built in Python)."""
    return report.tool_version or fedguard.__version__


def data_used(report: InspectionReport) -> str:
    """What the behavioural checks ran on, for the header beside ``data``: ``(64 examples as 1x28x28, seed 0)``, the
    shape each was fitted to for --arch; or why they did not run (weights that do not fit --arch leave only FG701 to
    say so, and the header had read as if they ran)."""
    config = report.config
    if config.get("data_examples"):
        shape = f" as {'x'.join(map(str, config['data_shape']))}" if config.get("data_shape") else ""
        return f"({config['data_examples']} examples{shape}, seed {config.get('seed')})"
    return "(behavioural checks not run: the model does not fit --arch)" if config.get("data") and report.loaded else ""


def sorted_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first: severity, then confidence, then rule id and layer (stable), a layer's numbers as numbers
    (``head.2`` before ``head.11``, which text order had put first)."""
    def layer_key(layer: str | None) -> list:
        parts = re.split(r"(\d+)", layer or "")  # a number by its length, then its digits: int() stops at 4,300 digits
        return [(len(p.lstrip("0")), p.lstrip("0")) if i % 2 else (0, p) for i, p in enumerate(parts)]

    return sorted(findings, key=lambda f: (-int(f.severity), -int(f.confidence), f.rule_id, layer_key(f.layer)))


def severity_counts(findings: Iterable[Finding]) -> dict[str, int]:
    """``{"critical": n, "high": n, "medium": n, "low": n, "info": n}``, worst first."""
    counts = {str(s): 0 for s in SEVERITY_ORDER}
    for finding in findings:
        counts[str(finding.severity)] += 1
    return counts


def json_safe(value: Any, digits: int | None = None) -> Any:
    """Convert evidence to plain JSON values.

    numpy and torch scalars become Python numbers, arrays and tensors become
    (nested) lists, tuples and sets become lists, enums their string value,
    mapping keys strings, and non-finite floats the strings ``"nan"``,
    ``"inf"`` and ``"-inf"`` (JSON has no literal for them). Anything else
    unknown becomes ``str(value)``. With ``digits``, floats keep that many
    significant digits (measurements, not 17-digit noise).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(value) if digits is None else float(f"{value:.{digits}g}")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v, digits) for v in items]
    tolist = getattr(value, "tolist", None)  # numpy scalar/array, torch tensor
    if callable(tolist):
        return json_safe(tolist(), digits)
    return str(value)


def format_value(value: Any, *, max_items: int = 8) -> str:
    """A short human form of one evidence value (``0.9987``, ``62_006``, ``[1, 2, …]``): thousands grouped by ``_``,
    as Python writes them, since evidence is listed with commas (``fan_in=7,840`` had read as two items)."""
    value = json_safe(value)
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, int):
        return f"{value:_}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        shown = ", ".join(format_value(v, max_items=max_items) for v in value[:max_items])
        more = f", … ({len(value)} items; all in --format json)" if len(value) > max_items else ""
        return f"[{shown}{more}]"
    if isinstance(value, dict):  # capped as lists are (FG003's 30 renamed layers had run to 60 lines)
        shown = ", ".join(f"{k}: {format_value(v, max_items=max_items)}" for k, v in list(value.items())[:max_items])
        more = f", … ({len(value)} items; all in --format json)" if len(value) > max_items else ""
        return "{" + shown + more + "}"
    return str(value)


def fired_rules(findings: Iterable[Finding], rules: Mapping[str, Rule]) -> list[Rule]:
    """The rules behind ``findings``, by rule id; a rule id missing from ``rules``
    gets a stand-in built from the finding's title so nothing is dropped."""
    out: dict[str, Rule] = {}
    for finding in findings:
        if finding.rule_id not in out:
            out[finding.rule_id] = rules.get(finding.rule_id) or Rule(
                rule_id=finding.rule_id, name=finding.title, summary=finding.title, help="", reference=""
            )
    return [out[k] for k in sorted(out)]


#: Characters shown as nothing, or that act on the text around them: the bidirectional marks and overrides, zero-width
#: spaces and joiners, invisible operators, the byte-order mark, the soft hyphen, fillers, variation selectors and tag
#: characters (a file name with them looks like another's).
_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f"
)
#: Lone surrogates: the bytes of a file name that is not UTF-8 (Python's surrogateescape), which no report can encode.
_SURROGATES = "\ud800-\udfff"
#: Characters a terminal acts on instead of printing: C0/C1 controls (ESC starts colour, title and clear-screen
#: sequences; a newline or a Unicode line separator would forge a report line) and the invisible ones.
_UNPRINTABLE = re.compile(f"[\x00-\x1f\x7f-\x9f{_INVISIBLE}{_SURROGATES}]")
_SURROGATE = re.compile(f"[{_SURROGATES}]")


def _escaped(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


#: Width a text report is laid out for in a file or a pipe; on a terminal, its width within MIN..MAX_TEXT_WIDTH
#: (:func:`laid_out_for`): a fixed 100 had wrapped every long line of an 80-column terminal mid-word, and the
#: terminal's width in a file had made one command's report differ by the window it ran in.
TEXT_WIDTH = 100
MIN_TEXT_WIDTH, MAX_TEXT_WIDTH = 80, 120
_COLUMNS: contextvars.ContextVar[int | None] = contextvars.ContextVar("fedguard_terminal_columns", default=None)


@contextlib.contextmanager
def laid_out_for(columns: int | None):
    """Text reports rendered inside the block are laid out for a terminal of ``columns`` (None: a file's width)."""
    token = _COLUMNS.set(columns)
    try:
        yield
    finally:
        _COLUMNS.reset(token)


def text_width() -> int:
    """The width a text report is laid out for (see :data:`TEXT_WIDTH`)."""
    columns = _COLUMNS.get()
    return TEXT_WIDTH if columns is None else max(MIN_TEXT_WIDTH, min(MAX_TEXT_WIDTH, columns))


#: Findings a text or HTML report shows, worst first; the others are counted, and JSON and SARIF hold them all (a file
#: of 9,000 planted layers had made 11.8 MB of HTML and 8.5 MB of text).
MAX_SHOWN_FINDINGS = 200


def shown_findings(findings) -> tuple[list[Finding], int]:
    """The worst :data:`MAX_SHOWN_FINDINGS` of ``findings`` (:func:`sorted_findings`) and how many are left out."""
    ordered = sorted_findings(findings)
    return ordered[:MAX_SHOWN_FINDINGS], max(0, len(ordered) - MAX_SHOWN_FINDINGS)


def joined_lines(items: list[str], sep: str, width: int) -> list[str]:
    """``items`` joined by ``sep`` into lines of at most ``width`` characters, breaking only between items (a path,
    a layer's name or a number is never split)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(sep) + len(item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


def print_hanging(console, text, first: str = "", rest: str = "    ") -> None:
    """Print the rich ``text`` on ``console`` broken at spaces to its width, the first line after ``first`` and the
    others after ``rest`` (a hanging indent); a word longer than a line (a layer's name, a path) stays whole."""
    from rich.text import Text

    # broken at spaces only, nothing cut: "ignore" as the text's own overflow (as wrap()'s argument it turns the
    # breaking off)
    whole = text.copy()
    whole.overflow = "ignore"
    width = console.width - max(len(first), len(rest))
    if len(first) + whole.cell_len <= console.width:
        width = console.width  # one line as it is
    for i, part in enumerate(whole.wrap(console, width)):
        console.print(Text(rest if i else first) + part, soft_wrap=True)


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on shown as its escape (``\\x1b``, ``\\n``).

    Tensor names come from the model file, which the server wrote, and paths
    from the file system; in a report they must not move the cursor, recolour,
    retitle, forge lines or reverse the text after them (U+202E). Web pages show
    the same escapes, so that a name reads alike in every format (a line break
    had been laid out as a space there).
    """
    return _UNPRINTABLE.sub(_escaped, text)


def shell_words(words: Iterable[str]) -> str:
    """``words`` as one command a shell reads back as them: quoted as :func:`shlex.join` does, and a word with a
    character :func:`printable` escapes (a file name with a line break) in ``$'...'``, which bash, zsh and ksh read
    the escapes back from (``'a\\nb'`` had named a file with a backslash in it)."""
    def word(text: str) -> str:
        if not _UNPRINTABLE.search(text):
            return shlex.quote(text)
        return "$'" + printable(text.replace("\\", "\\\\").replace("'", "\\'")) + "'"

    return " ".join(word(w) for w in words)


#: Keys whose string values name files: JSON keeps them exact, so that they open the file (a right-to-left mark is
#: part of many a Hebrew or Arabic file name); only a lone surrogate, which no UTF-8 document can hold, is escaped.
FILE_KEYS = frozenset({"path", "reference", "spec", "source", "image_file", "updates_file", "data"})


def printable_values(value: Any) -> Any:
    """Plain JSON ``value`` with every string in it, keys included, :func:`printable`, except the file names under
    :data:`FILE_KEYS`.

    A machine-readable report is read with ``jq -r`` and shown by CI logs as often as it is parsed: a tensor name
    must not reach a terminal as an escape sequence there either, and a lone surrogate would make the document
    invalid UTF-8, which strict parsers refuse. File names are the user's own, given on the command line.
    """
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k): _SURROGATE.sub(_escaped, v) if k in FILE_KEYS and isinstance(v, str) else printable_values(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [printable_values(v) for v in value]
    return value


def plural(n: int, word: str) -> str:
    """``n word`` or ``n words``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def fmt_num(value: Any, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals for tables; an en dash for None."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v:
        return "nan"
    text = f"{v:.{digits}f}"
    if float(text) == 0:  # -0.0004 rounds to "-0.000", which reads as a sign that is not there
        text = text.lstrip("-")
    return text


#: The JSON Schema file, in ``fedguard.reports.schemas``, of each command's JSON report.
SCHEMA_FILES = {
    "inspect": "inspect-report.schema.json",
    "audit": "audit-report.schema.json",
    "disaggregate": "disaggregate-report.schema.json",
}


def load_schema(report: str = "inspect") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that ``fedguard <report> --format json`` output satisfies.

    Parameters
    ----------
    report : {'inspect', 'audit', 'disaggregate'}
        The command whose report the schema describes.

    Raises
    ------
    ValueError
        For another name.
    """
    from importlib import resources

    if report not in SCHEMA_FILES:
        raise ValueError(f"no JSON report for {report!r}; choose one of {', '.join(SCHEMA_FILES)}")
    text = resources.files("fedguard.reports.schemas").joinpath(SCHEMA_FILES[report]).read_text(encoding="utf-8")
    return json.loads(text)


def generated_at() -> str:
    """When a report is written, in UTC (``SOURCE_DATE_EPOCH``, when set to a time a date can hold, for reproducible
    output; one past the year 9999 had raised)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = _dt.datetime.now(tz=_dt.timezone.utc)
    if epoch.isdigit():
        with contextlib.suppress(OverflowError, OSError, ValueError):
            when = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def command_line() -> list[str] | None:
    """The ``fedguard`` command writing a report, as typed (``["fedguard", "audit", "--model", ...]``), so that a
    report says how to repeat it; None when called from Python (its settings are in the report either way)."""
    return list(COMMAND_LINE.get()) or None


def shown_command() -> str | None:
    """:func:`command_line` as one shell line, each argument quoted where the shell needs it, control characters
    escaped; None when called from Python."""
    typed = command_line()
    return printable(shlex.join(typed)) if typed else None


def more_detectors(report: InspectionReport) -> str:
    """``--data, --reference would run N more detectors`` when a clean inspection left out detectors for options it
    was not given (a newcomer had not known what they would add): only the options not given, and only the detectors
    they would add; when detectors were named with --detector, how many others the options given would have run."""
    from fedguard.detectors import DETECTORS
    from fedguard.detectors.base import NEED_FLAGS, NEEDS_DATA, NEEDS_MODULE, NEEDS_REFERENCE

    if not report.loaded:
        return ""
    given = {NEEDS_MODULE: report.arch, NEEDS_DATA: report.config.get("data"), NEEDS_REFERENCE: report.reference}
    missing = {need for need, value in given.items() if not value}
    if report.config.get("detectors_requested"):  # a clean subset had read as the whole inspection
        runnable = [n for n, cls in DETECTORS.items() if n not in report.detectors_run and not cls.needs & missing]
        return f"the other {plural(len(runnable), 'detector')} these options run left out by --detector" if runnable else ""
    left = [cls for name, cls in DETECTORS.items() if name not in report.detectors_run and cls.needs & missing]
    options = [flag for need, flag in NEED_FLAGS.items() if need in missing and any(need in cls.needs for cls in left)]
    return f"{', '.join(options)} would run {plural(len(left), 'more detector')}" if left else ""


def exit_note(report: InspectionReport) -> str:
    """``exit 0: no finding at or above --fail-on critical`` where the command's exit status does not read as the
    verdict does (a malicious model passing under a high ``--fail-on``, a clean one failing under ``--fail-on low``);
    nothing otherwise, or from Python (no ``fail_on`` in the report's config)."""
    fail_on = report.config.get("fail_on")
    if fail_on is None:
        return ""
    failing = bool(report.at_or_above(fail_on))
    if failing == (report.verdict is not Verdict.CLEAN):
        return ""
    return f"exit {1 if failing else 0}: {'findings' if failing else 'no finding'} at or above --fail-on {fail_on}"


def suppressed_line(report: InspectionReport, limit: int = 8) -> str:
    """``ignored with --ignore: FG301 high in features.0, FG803 medium in fc1`` (the first ``limit``, worst first)."""
    shown = [f"{f.rule_id} {f.severity} in {f.layer if f.layer is not None else '(file)'}"
             for f in sorted_findings(report.suppressed)]  # fmt: skip
    more = f" and {len(shown) - limit} more (all in --format json)" if len(shown) > limit else ""
    return f"ignored with --ignore: {', '.join(shown[:limit])}{more}"
