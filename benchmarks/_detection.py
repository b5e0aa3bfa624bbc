"""What ``detection_rates.py`` and ``heldout_detection.py`` share: the static verdict of a state_dict and the target.

The verdict is ``fedguard inspect``'s without ``--arch`` or data: every detector on the weights alone, then
:func:`fedguard.inspect.judge`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.detectors.base import InspectContext  # noqa: E402
from fedguard.inspect import judge, run_detectors  # noqa: E402
from fedguard.modelview import ModelView  # noqa: E402
from fedguard.types import Finding, Verdict  # noqa: E402

#: The detection target of the issue that introduced ``fedguard inspect``: on a held-out set, true-positive rate
#: (crafted models not judged clean) at least 0.95 at a false-positive rate (benign ones not clean) of at most 0.05
#: now, 0.99 at 0.01 later.
TARGET = "[target TPR >= 0.95 at FPR <= 0.05; later >= 0.99 at <= 0.01]"


def static_verdict(state_dict) -> tuple[Verdict, list[Finding]]:
    """The verdict and findings of every detector on ``state_dict``'s weights alone."""
    findings, _ = run_detectors(InspectContext(view=ModelView.from_state_dict(state_dict)))
    return judge(findings), findings
