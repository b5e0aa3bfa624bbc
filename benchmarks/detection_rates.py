"""Detection rates of ``fedguard inspect``'s static checks on the model zoo.

Runs every detector (no ``--arch``, no data: what a client gets from the
weights alone) on every benign and crafted model of ``tests/zoo.py`` and
prints the true-positive rate (crafted models judged malicious or suspicious),
the false-positive rate (benign models judged anything but clean), and each
miss and false alarm by label. Run from the repository root:

    python benchmarks/detection_rates.py
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _detection import TARGET, static_verdict  # noqa: E402
from fedguard.types import Verdict  # noqa: E402
from tests.zoo import benign_models, crafted_models  # noqa: E402


def verdict_of(state_dict) -> tuple[Verdict, list[str]]:
    verdict, findings = static_verdict(state_dict)
    return verdict, sorted({f"{f.rule_id}:{f.severity}" for f in findings})


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, nothing else
    false_alarms, misses = [], []
    benign = crafted = 0
    caught_by = Counter()
    for label, _arch, sd in benign_models():
        benign += 1
        verdict, rules = verdict_of(sd)
        if verdict is not Verdict.CLEAN:
            false_alarms.append((label, verdict, rules))
    for label, crafter, _arch, sd in crafted_models():
        crafted += 1
        verdict, rules = verdict_of(sd)
        if verdict is Verdict.CLEAN:
            misses.append((label, verdict, rules))
        else:
            caught_by[crafter] += 1
    for label, verdict, rules in false_alarms:
        print(f"false alarm: {label}: {verdict} {rules}")
    for label, verdict, rules in misses:
        print(f"missed: {label}: {rules}")
    tpr = 1 - len(misses) / max(crafted, 1)
    fpr = len(false_alarms) / max(benign, 1)
    print(f"static detection on the zoo: TPR {tpr:.3f} ({crafted - len(misses)}/{crafted} crafted), "
          f"FPR {fpr:.3f} ({len(false_alarms)}/{benign} benign)  {TARGET}")


if __name__ == "__main__":
    main()
