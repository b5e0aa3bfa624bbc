"""Core result types passed between loaders, detectors and renderers.

All are frozen dataclasses: detectors return them, renderers read them, nothing
mutates them in between.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Mapping


def _by_name(op: str):
    """``int``'s comparison ``op`` for a :class:`_Level`, with a string on the other side read as one of its names."""
    compare = getattr(int, f"__{op}__")

    def method(self, other):
        return compare(self, type(self).parse(other) if isinstance(other, str) else other)

    return method


class _Level(enum.IntEnum):
    """An ordered level (``a >= b``) that also equals and orders against its name (``severity >= "medium"``,
    ``LeakageLevel("high")``); a string that names none of its members is a ValueError, not False, so that a gate
    with a typo fails loudly."""

    def __str__(self) -> str:
        return self.name.lower()

    def __format__(self, spec: str) -> str:
        """Its name in f-strings, with a format spec too (``f"{level:<8}"`` had given ``3``, int's); its number where
        the spec asks for one (``f"{level:d}"``)."""
        if spec and spec[-1] in "bcdoxXneEfFgG%":
            return format(int(self), spec)
        return format(str(self), spec)

    @classmethod
    def parse(cls, text: str) -> "_Level":
        try:
            return cls[text.strip().upper()]
        except (KeyError, AttributeError):
            kind = " ".join(re.findall(r"[A-Z][a-z]+", cls.__name__)).lower()
            raise ValueError(f"unknown {kind} {text!r}; use one of {', '.join(str(s) for s in cls)}") from None

    @classmethod
    def _missing_(cls, value):
        return cls.parse(value) if isinstance(value, str) else None

    __eq__, __ne__, __lt__, __le__, __gt__, __ge__ = (_by_name(op) for op in ("eq", "ne", "lt", "le", "gt", "ge"))

    def __hash__(self) -> int:
        """As its lower-case name, which it equals: ``level in {"medium", "high"}`` and a dict keyed by names find it.
        It also equals its number and its name in any case, which no one hash can follow: ``level in {3}`` does not
        find it."""
        return hash(str(self))


class Severity(_Level):
    """How bad a finding is, ordered so that ``a >= b`` compares severity."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


class Confidence(_Level):
    """How sure the detector is that the pattern is deliberate."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2


def _by_rank(op: str):
    """``int``'s comparison ``op`` of two verdicts' places in their order, a string on the other side of an ordering
    read as a verdict's name (another kind of verdict: NotImplemented)."""
    compare = getattr(int, f"__{op}__")

    def method(self, other):
        if isinstance(other, str) and not isinstance(other, _Ranked):
            if op in ("eq", "ne"):  # the name's own equality: any other string is simply unequal (`v in ["error", v]`)
                return getattr(str, f"__{op}__")(self, other)
            other = self.parse(other)
        if not isinstance(other, type(self)):
            return NotImplemented
        rank = type(self)._member_names_.index
        return compare(rank(self._name_), rank(other._name_))

    return method


class _Ranked(str, enum.Enum):
    """A verdict: its name, ordered from harmless to worst (``"block" > "warn"``).

    It equals its name (``report.verdict == "pass"``) and orders against another of its kind or a name
    (``report.verdict >= "warn"``); ordered against a string that names none of its members it raises ValueError,
    so that a gate with a typo fails loudly.
    """

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> "_Ranked":
        for member in cls:
            if member.value == text.strip().lower():
                return member
        raise ValueError(f"unknown verdict {text!r}; use one of {', '.join(m.value for m in cls)}")

    __eq__, __ne__, __lt__, __le__, __gt__, __ge__ = (_by_rank(op) for op in ("eq", "ne", "lt", "le", "gt", "ge"))
    __hash__ = str.__hash__  # as a name: `verdict in {"pass", "warn"}`


class Verdict(_Ranked):
    """Overall judgement of a received model."""

    CLEAN = "clean"
    SUSPICIOUS = "suspicious"
    MALICIOUS = "malicious"


@dataclass(frozen=True)
class Finding:
    """One piece of evidence against a model, in the style of a bandit result.

    Parameters
    ----------
    rule_id : str
        Stable identifier ``FG###``; documented in ``docs/detectors.md``.
    title : str
        Short name of what was found.
    severity, confidence
        How bad, and how sure.
    layer : str or None
        The layer (parameter-name prefix) the evidence is in; None for file-level.
    message : str
        What the server could do with it and what the client should do.
    evidence : mapping
        The numbers behind the finding (JSON-serialisable scalars or short lists).
    """

    rule_id: str
    title: str
    severity: Severity
    confidence: Confidence
    layer: str | None
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # a detector's 3 or "high" as the member, which the renderers' tables are keyed by
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "confidence", Confidence(self.confidence))

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "title": self.title,
            "severity": str(self.severity),
            "confidence": str(self.confidence),
            "layer": self.layer,
            "message": self.message,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True)
class Rule:
    """Static description of what a detector looks for (SARIF ``reportingDescriptor``)."""

    rule_id: str
    name: str
    summary: str
    help: str
    reference: str
    #: Where the first paper (or document) ``reference`` names can be read: SARIF's ``helpUri``, ``fedguard rules``
    #: (HTML reports name no address: they are offline pages).
    url: str = ""


@dataclass(frozen=True)
class InspectionReport:
    """Everything ``fedguard inspect`` learned about one model file.

    Attributes
    ----------
    path, sha256, file_format, size_bytes : str, str, str, int
        The file as received and its SHA-256.
    n_parameters, n_layers : int
        What it holds (0 when refused unread).
    findings : tuple of Finding
        What the detectors found, each with its rule id, severity, confidence, layer, message and evidence.
    verdict : Verdict
        ``clean``, ``suspicious`` or ``malicious`` (:func:`fedguard.inspect.judge`); compare with names in order of
        severity: ``report.verdict >= "suspicious"``.
    detectors_run : tuple of str
        The detectors that ran (those that need ``arch``, ``data`` or ``reference`` only when given).
    seconds : float
        Time the inspection took.
    arch, reference : str or None
        The expected architecture and last round's model, when given.
    """

    path: str
    sha256: str
    file_format: str
    size_bytes: int
    n_parameters: int
    n_layers: int
    findings: tuple[Finding, ...]
    verdict: Verdict
    detectors_run: tuple[str, ...]
    seconds: float
    arch: str | None = None
    reference: str | None = None
    tool_version: str = ""
    #: False for a file refused unread (a pickle that would run code): nothing in it was counted or checked.
    loaded: bool = True
    #: How the inspection was run, for its provenance: the options given, the data's description, the seed, the
    #: reference's SHA-256, torch's version (and the CLI's --fail-on).
    config: Mapping[str, Any] = field(default_factory=dict)
    #: Findings the caller accepted with ``ignore`` (``--ignore``), worst first: listed apart, not judged
    #: (:mod:`fedguard.suppressions`).
    suppressed: tuple[Finding, ...] = ()

    def __str__(self) -> str:
        """One line for a log: the verdict and the findings by rule (``repr`` has every field)."""
        rules = ", ".join(sorted({f"{f.rule_id} {f.severity}" for f in self.findings})) or "no findings"
        return f"{self.path}: {self.verdict} ({rules})"

    @property
    def ignore_unmatched(self) -> tuple[str, ...]:
        """The ``ignore`` entries (``--ignore``) that matched no finding, which the command line names on stderr: a
        stale or misspelt entry accepts nothing."""
        from fedguard.suppressions import unmatched_in

        return tuple(str(entry) for entry in unmatched_in(self))

    def worst(self) -> Severity | None:
        """The highest severity among the findings; None when there are none."""
        return max((f.severity for f in self.findings), default=None)

    def at_or_above(self, severity: Severity | str) -> tuple[Finding, ...]:
        """The findings at or above ``severity`` (a :class:`Severity` or its name, as ``--fail-on`` takes it)."""
        # a number is taken as the level it equals; None or 99 is a ValueError (a clean report had passed them)
        if isinstance(severity, bool):  # True had read as low
            raise ValueError(f"severity is {severity}; pass a Severity or its name, e.g. 'medium'")
        severity = Severity.parse(severity) if isinstance(severity, str) else Severity(severity)
        return tuple(f for f in self.findings if f.severity >= severity)


# --------------------------------------------------------------------------- audit (self-attack) results

#: Why an attack the audit runs by default did not run, when the caller named others (``skipped``).
NOT_REQUESTED = "not requested (the audit was asked for other attacks)"


class LeakageLevel(_Level):
    """How much of the private batch an attack rebuilt, ordered so that ``a >= b`` compares.

    The thresholds behind each level are in :mod:`fedguard.metrics` and ``docs/audit.md``.
    """

    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3


class AuditVerdict(_Ranked):
    """What to do with the pending update: upload (pass), look closer (warn), do not upload (block)."""

    PASS = "pass"
    WARN = "warn"
    BLOCK = "block"


@dataclass(frozen=True)
class Reconstruction:
    """What one attack rebuilt from an update. Attacks never see the true batch.

    Parameters
    ----------
    attack : str
        Registry name of the attack.
    images : tensor or None
        ``[N, C, H, W]`` in [0, 1] on the CPU, the attack's best guess (None for
        label-only attacks).
    labels : tensor or None
        ``[N]`` int64 labels the attack assigns to its guesses (or to the batch).
    label_counts : tensor or None
        ``[num_classes]`` int64 estimated examples per class.
    candidates : tensor or None
        ``[S, N, C, H, W]`` the final images of every random start, so that the
        success rate over starts can be measured against the truth afterwards.
    candidate_losses : tuple of float
        Gradient loss of every start (``inf`` for a start that diverged).
    iterations : int
        Optimizer iterations run (the attack's own unit; see ``details``).
    seconds : float
        Wall time of the attack.
    stopped : str
        Why it ended: ``done`` (analytic), ``converged``, ``max_iterations``,
        ``time_budget`` or ``interrupted``.
    details : mapping
        Attack-specific numbers (restarts, learning rate, losses...).
    labels_from_update : bool
        Whether an image attack read ``labels`` off the update itself (DLG's optimised labels, MKOR's class rows),
        so that they are a leak of its own, not labels it was given or another attack recovered.
    """

    attack: str
    images: Any = None
    labels: Any = None
    label_counts: Any = None
    candidates: Any = None
    candidate_losses: tuple[float, ...] = ()
    iterations: int = 0
    seconds: float = 0.0
    stopped: str = "done"
    details: Mapping[str, Any] = field(default_factory=dict)
    labels_from_update: bool = False


@dataclass(frozen=True)
class SampleLeak:
    """One true example and the reconstruction matched to it (Hungarian matching of the most total PSNR)."""

    index: int
    match: int
    psnr: float
    ssim: float
    mse: float
    label: int
    rebuilt_label: int | None
    level: LeakageLevel = LeakageLevel.NONE
    baseline_psnr: float | None = None
    baseline_ssim: float | None = None


@dataclass(frozen=True)
class AttackOutcome:
    """One attack's reconstruction measured against the true batch (its ``Leakage``).

    Image metrics are None for label-only attacks; label metrics are None when
    the attack recovers no labels. ``images`` holds the reconstructions
    re-ordered to match the true batch (for the grids; never serialised).

    Attributes
    ----------
    name, title, reference : str
        The attack's registry name, its title and its paper.
    kind : {"images", "labels"}
        What it rebuilds.
    level : LeakageLevel
        ``none``, ``low``, ``medium`` or ``high`` (thresholds in ``docs/audit.md``).
    psnr_mean, psnr_max, ssim_mean, ssim_max, mse_mean : float or None
        Over the examples it rebuilt, each matched to its true example (``linear_sum_assignment``); PSNR in dB,
        100 for an exact copy.
    label_accuracy : float or None
        The share of the batch's labels it recovered.
    label_count_error, label_counts_exact : int, float or None
        Label counts' total error in examples and the share of classes counted exactly.
    samples : tuple of SampleLeak
        Per example: its PSNR, SSIM, label and level.
    iterations, seconds, stopped : int, float, str
        The work it did and why it ended (``done``, ``max_iterations``, ``time_budget``, ``interrupted``, ...).
    starts, start_success_rate : int, float or None
        Random starts run and the share that reached the high level (DLG).
    recovered_fraction : float or None
        Share of the batch rebuilt at PSNR >= 30 dB or SSIM >= 0.9.
    details : mapping
        The attack's own figures (JSON ``attacks[].details``, ``docs/json-schema.md``).
    image_file : str or None
        The PNG grid written beside the report.
    """

    name: str
    title: str
    reference: str
    kind: str
    level: LeakageLevel
    psnr_mean: float | None
    psnr_max: float | None
    ssim_mean: float | None
    ssim_max: float | None
    mse_mean: float | None
    label_accuracy: float | None
    label_count_error: int | None
    label_counts_exact: float | None
    samples: tuple[SampleLeak, ...]
    iterations: int
    seconds: float
    stopped: str
    starts: int | None = None
    start_success_rate: float | None = None
    recovered_fraction: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    image_file: str | None = None
    images: Any = field(default=None, repr=False, compare=False)


#: ``details["update"]`` of a malicious-server emulator's outcome: the update it read is the batch's under the model
#: it crafted, not the client's (:attr:`AuditReport.next_step` says so).
CRAFTED_UPDATE = "what the batch gives under the crafted model"


@dataclass(frozen=True)
class Leakage:
    """The overall leakage level: the worst level over the attacks that ran.

    Attributes
    ----------
    level : LeakageLevel
        The worst level (``none`` when no attack ran: :attr:`AuditReport.measured` tells the two apart).
    by_attack : mapping of str to LeakageLevel
        Each attack's level.
    worst_attack : str or None
        The attack that reached ``level`` first.
    baseline_psnr : float or None
        Mean PSNR of the guess a server makes without the update (public mean image or class mean).
    thresholds : mapping of str to float
        The PSNR and SSIM thresholds of the levels, as applied.
    """

    level: LeakageLevel
    by_attack: Mapping[str, LeakageLevel]
    worst_attack: str | None
    baseline_psnr: float | None
    thresholds: Mapping[str, float]


@dataclass(frozen=True)
class AuditReport:
    """Everything ``fedguard audit`` measured about one pending update.

    ``true_images`` (the private batch, for the PNG grids and the HTML page) is
    kept in memory only; the JSON report never contains pixel data.
    ``exposure`` is :meth:`fedguard.exposure.ClientExposure.to_dict` (None when
    not asked for): whether secure aggregation hides this update across rounds.
    ``notes`` are what the reader must know beyond the figures (an update read in
    that is not what the model gives on the batch).

    Attributes
    ----------
    verdict : AuditVerdict
        ``pass``, ``warn`` or ``block`` (``block`` when the leakage reaches ``fail_on``); compare with names:
        ``report.verdict >= "warn"``.
    leakage : Leakage
        The overall level and each attack's.
    attacks : tuple of AttackOutcome
        The attacks that ran, in the order they ran.
    skipped : mapping of str to str
        Attacks that did not run, and why.
    fail_on : LeakageLevel
        The level at which the verdict is ``block``.
    model, data, update, threat, config : mapping
        What was audited and how: the weights and their digests (``model["inspection"]``: inspect's weight rules),
        the batch (``data["auxiliary_examples"]``: the examples left to stand in for the server's public data), the
        update's protocol, schedule, defense and norm, what the server is taken to know, and the run's settings
        (JSON fields of the same names, ``docs/audit.md``).
    seconds : float
        Time the audit took.
    interrupted : bool
        Ctrl-C (or ``stop``) ended it early; the results are partial.
    """

    verdict: AuditVerdict
    leakage: Leakage
    attacks: tuple[AttackOutcome, ...]
    skipped: Mapping[str, str]
    fail_on: LeakageLevel
    model: Mapping[str, Any]
    data: Mapping[str, Any]
    update: Mapping[str, Any]
    threat: Mapping[str, Any]
    config: Mapping[str, Any]
    seconds: float
    interrupted: bool = False
    tool_version: str = ""
    exposure: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    true_images: Any = field(default=None, repr=False, compare=False)
    true_labels: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        """One line for a log: the verdict, the leakage and each attack's level (``repr`` has every field)."""
        attacks = ", ".join(f"{a.name} {a.level}" for a in self.attacks) or "no attack ran"
        return f"audit: {self.verdict}, leakage {self.leakage_said} ({attacks}; {self.seconds:.1f} s)"

    @property
    def next_step(self) -> str | None:
        """What the verdict asks of the client, in one sentence; None for a pass, unless attacks it runs by default
        were left out (a pass on label counts alone had read as the update's)."""
        level, fail_on = self.leakage.level, LeakageLevel(self.fail_on)
        if self.verdict == AuditVerdict.PASS:
            left = [name for name, why in self.skipped.items() if why == NOT_REQUESTED]
            return (f"A pass on the named attacks alone: the default attacks {', '.join(left)} were not requested; "
                    "audit with them before relying on it.") if left else None  # fmt: skip
        what = "your batch's labels" if self._kind(self.leakage.worst_attack) == "labels" else "your data"
        if self.verdict == AuditVerdict.BLOCK and (self.model.get("inspection") or {}).get("verdict") == "malicious":
            return ("Do not train on the model received, nor upload an update computed on it: fedguard inspect finds "
                    "parameters in it planted to rebuild your data (see the notes); tell the server, and run "
                    "`fedguard inspect` on every model it sends.")  # fmt: skip
        emulated = [a for a in self.attacks if a.details.get("update") == CRAFTED_UPDATE]
        own = [a for a in self.attacks if a.details.get("update") != CRAFTED_UPDATE]
        if self.verdict == AuditVerdict.BLOCK and emulated and not any(a.level >= fail_on for a in own):
            worst = max(emulated, key=lambda a: a.level)  # the update you computed leaks less: the advice is the model's
            return (f"Do not train on a model like the one the {worst.name} emulator crafts: a server that sent one would "
                    f"recover your data at level {level} from the update this batch gives under it (the other attacks "
                    "read the update you computed). Run `fedguard inspect` on every model the server sends and refuse "
                    "such a one; a larger batch or a defense such as DP-SGD lowers what it reads.")  # fmt: skip
        if self.verdict == AuditVerdict.BLOCK:
            return (f"Do not upload this update as it is: {self.leakage.worst_attack} recovers {what} at level {level}, "
                    f"at or above the fail-on level {fail_on}. A larger batch, more local steps or a defense such as "
                    "DP-SGD can lower what leaks (docs/audit.md: defenses); audit again after the change.")  # fmt: skip
        if self.verdict != AuditVerdict.WARN:
            return None
        if self.attacks and level > LeakageLevel.NONE and int(level) == int(fail_on) - 1:
            return (f"Look closer before uploading: {self.leakage.worst_attack} recovers {what} at level {level}, one "
                    f"below the fail-on level {fail_on}.")  # fmt: skip
        return ("Inconclusive: the notes and skipped attacks say what keeps these figures from measuring the whole leak "
                "(an attack stopped or left out, an update that is not what the batch gives), so it does not pass; do "
                "what they name and audit again.")

    def _kind(self, name: str | None) -> str | None:
        """The kind (``images``, ``labels``) of the attack ``name`` that ran; None for none."""
        return next((a.kind for a in self.attacks if a.name == name), None)

    @property
    def leakage_said(self) -> str:
        """The leakage level as reports say it: ``not measured`` when no attack ran (the level then reads none)."""
        return str(self.leakage.level) if self.measured else "not measured"

    @property
    def exposure_not_analysed(self) -> str | None:
        """Why :attr:`exposure` is None, as the reports say it (None when it was analysed)."""
        if self.exposure is not None:
            return None
        if not self.config.get("exposure_requested", self.interrupted):
            return "turned off"
        if self.update.get("norm") == 0:
            return "the update is zero everywhere: the sums hold nothing of it to recover"
        return "the audit was interrupted before it"

    @property
    def measured(self) -> bool:
        """Whether the leakage level was measured: an attack ran, or the update is zero everywhere, which reveals
        nothing of the batch (the attacks on it are skipped)."""
        return bool(self.attacks) or self.update.get("norm") == 0

    def outcome(self, name: str) -> AttackOutcome:
        """The outcome of attack ``name`` (KeyError when it did not run)."""
        for item in self.attacks:
            if item.name == name:
                return item
        raise KeyError(f"attack {name!r} did not run; ran: {', '.join(a.name for a in self.attacks) or 'none'}")
