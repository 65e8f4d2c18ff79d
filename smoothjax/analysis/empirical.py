"""Empirical robust accuracy of attacked PREDICT logs, per attack radius, next to the certified accuracy.

``certify.py`` in predict mode with ``certify.attack`` set attacks every image first and writes
``predict_<attack name>_sigma_<sigma>.tsv``; ``logs.attack_name`` builds that name and ``logs.parse_attack`` reads it
back.
The empirical robust accuracy at radius epsilon is the fraction of images that the smoothed classifier (PREDICT,
abstentions wrong) still classifies correctly after the attack of budget epsilon: an *upper* bound on the true
robust accuracy, only as tight as the attack is strong. The certified accuracy at the same radius is a *lower*
bound (up to alpha), so the true robust accuracy lies between the two rows of ``robustness_table``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from smoothjax.analysis.logs import attack_name, parse_attack, parse_sigma  # names: defined in logs
from smoothjax.analysis.metrics import certified_accuracy, prediction_summary

def _attack_label(settings: dict) -> str:
    label = f"{settings['attack'].upper()} T={settings['num_steps']} m={settings['num_noise_vec']}"
    return label + (" no-grad" if settings["no_grad"] else "") + (" base" if settings["base_attack"] else "")


def empirical_robust_accuracy(logs: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``(radii, accuracy)``, both (len(logs),) float64 sorted by radius: for each attacked prediction log (an
    ``EvalLog`` whose file name names an attack), its epsilon (pixel L2 units) and the fraction of its rows
    predicted correctly (abstentions count as wrong). Raises a one-line ValueError for a log whose name names no
    attack."""
    pairs = []
    for log in logs:
        settings = parse_attack(log.path)
        if settings is None:
            raise ValueError(f"{log.path}: the file name names no attack (pgd_eps_<eps>_steps_<T>_m_<m>)")
        pairs.append((settings["epsilon"], prediction_summary(log).accuracy))
    pairs.sort()
    return np.array([p[0] for p in pairs], np.float64), np.array([p[1] for p in pairs], np.float64)


def robustness_table(attack_logs: Sequence, certified_log=None) -> str:
    """Markdown table, one column per attack radius (pixel L2) and one row per attack configuration (attack,
    steps, m, flags): the empirical robust accuracy (``{:.3f}``; empty where that attack has no log at that
    radius), then, with ``certified_log`` (a certification log of the same model and sigma), the certified accuracy
    at the same radii. Returns text ending with a newline; one-line ValueError for a log naming no attack or two
    logs of the same attack and radius."""
    rows: dict[str, dict[float, float]] = {}
    for log in attack_logs:
        settings = parse_attack(log.path)
        if settings is None:
            raise ValueError(f"{log.path}: the file name names no attack (pgd_eps_<eps>_steps_<T>_m_<m>)")
        row = rows.setdefault(_attack_label(settings), {})
        if settings["epsilon"] in row:
            raise ValueError(f"{log.path}: a second log of {_attack_label(settings)} at epsilon "
                             f"{settings['epsilon']!r}; give one log per attack and radius")
        row[settings["epsilon"]] = prediction_summary(log).accuracy
    if not rows:
        raise ValueError("no attacked prediction logs given")
    radii = sorted({r for row in rows.values() for r in row})
    out = ["| radius | " + " | ".join(f"{r:.3}" for r in radii) + " |", "| --- |" + " --- |" * len(radii)]
    for label, row in rows.items():
        out.append(f"| empirical ({label}) | " + " | ".join(f"{row[r]:.3f}" if r in row else "" for r in radii)
                   + " |")
    if certified_log is not None:
        certified = certified_accuracy(certified_log, radii)
        out.append("| certified | " + " | ".join(f"{a:.3f}" for a in certified) + " |")
    return "\n".join(out) + "\n"


__all__ = ["attack_name", "empirical_robust_accuracy", "parse_attack", "parse_sigma", "robustness_table"]
