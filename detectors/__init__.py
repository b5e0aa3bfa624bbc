"""Static and behavioural signature checks for received global models.

Each module registers its detector (``drift`` two, for FG701 and FG702) in
:data:`DETECTORS`; the CLI, the API and the tests enumerate that registry.
Which detector reports which rules, and what each needs (``--arch``,
``--data``, ``--reference``): the table in ``docs/detectors.md`` (a test
holds it to the registry), or ``fedguard rules``.
"""

from fedguard.detectors import (  # noqa: F401  (imported to register)
    constant_rows,
    drift,
    fishing,
    gradient_snr,
    imprint,
    magnitude,
    nonfinite,
    opposite_rows,
    oversized,
    passthrough,
    responses,
    silenced,
    trap_weights,
    unscored,
)
from fedguard.detectors.base import DETECTORS, Detector, InspectContext, register_detector
from fedguard.types import Rule

__all__ = ["DETECTORS", "Detector", "InspectContext", "register_detector", "all_rules", "detector_of"]


def all_rules() -> dict[str, Rule]:
    """Every rule of every registered detector, by rule id, in id order."""
    found = {rule.rule_id: rule for _, detector in DETECTORS.items() for rule in detector.rules}
    return dict(sorted(found.items()))


def detector_of() -> dict[str, str]:
    """The name of the detector (``--detector NAME``) that reports each rule, by rule id."""
    return {rule.rule_id: name for name, detector in DETECTORS.items() for rule in detector.rules}
