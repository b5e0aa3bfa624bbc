"""Static and behavioural signature checks for received global models.

Each module registers its detector (``drift`` two, for FG701 and FG702) in
:data:`DETECTORS`; the CLI, the API, the tests and ``docs/detectors.md``'s
table of detectors (a test holds it to the registry) all enumerate that
registry.

========================  =====================================================
detector                  rules
========================  =====================================================
``nonfinite``             FG002 NaN/Inf parameters
``unscored``              FG003 weight-like tensors no check recognises
``constant_rows``         FG101 MKOR averaging rows
``opposite_rows``         FG104 opposite row pairs (inconspicuous MKOR)
``passthrough``           FG102 identity FC, FG103 copy/min/shift filters, FG105 pass-through stack, FG501 LOKI
``fishing``               FG201 class fishing, FG202 feature fishing
``imprint``               FG301 Robbing the Fed imprint layer
``trap_weights``          FG401 trap weights
``magnitude``             FG502 extreme magnitudes
``oversized``             FG601 oversized FC layer
``architecture_drift``    FG701 differs from ``--arch``
``reference_drift``       FG702 differs from ``--reference``
``gradient_snr``          FG801 D-SNR, FG802 transmit-SNR (needs ``--arch`` and ``--data``)
``responses``             FG803 sparse firing, FG804 data-space imprint (needs ``--arch`` and ``--data``)
``silenced``              FG805 the model discards the client's data (needs ``--arch`` and ``--data``)
========================  =====================================================
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
