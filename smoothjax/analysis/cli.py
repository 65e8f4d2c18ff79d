"""Command line of ``python -m smoothjax.analysis``: tables and summaries of certify / predict logs.

    python -m smoothjax.analysis LOG [LOG ...] [--radii=0,0.25,0.5 | --radii=start:stop:step] [--latex]
                                 [--labels=L1,L2,...] [--plot=out.png] [--no-acr] [--same_images]

Certification logs give a certified-accuracy table (markdown or LaTeX; ``--plot`` writes a PNG); sequential logs
add samples per image; prediction logs give accuracy and abstention; attacked prediction logs (``predict_<attack
name>_sigma_<sigma>.tsv``) give the empirical robust accuracy per attack radius next to the certified accuracy of
the certification log with the same sigma (from the logs' settings sidecars, else their names). ``--same_images``
keeps only the images (idx) every LOG has, e.g. to set a partial log beside a complete one. Flags are absl flags;
``--labels`` is a comma-separated list, one label per LOG.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from smoothjax.analysis.empirical import robustness_table
from smoothjax.analysis.logs import log_sigma, parse_attack, read_log
from smoothjax.analysis.metrics import prediction_summary, samples_summary
from smoothjax.analysis.tables import default_radii, format_samples_summary, latex_table, markdown_table, \
    parse_radii, plot_certified_accuracy

_PROG = "python -m smoothjax.analysis"


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("radii", None, "comma list (0,0.25,0.5) or start:stop:step (stop inclusive)", flag_values=fv)
    flags.DEFINE_boolean("latex", False, "print a LaTeX table instead of markdown", flag_values=fv)
    flags.DEFINE_list("labels", None, "one row label per LOG, comma-separated (default: the paths)", flag_values=fv)
    flags.DEFINE_string("plot", None, "also write a certified-accuracy plot to this PNG file", flag_values=fv)
    flags.DEFINE_boolean("no-acr", False, "omit the ACR column (reference layout)", flag_values=fv)
    flags.DEFINE_boolean("same_images", False, "keep only the idx every LOG has (compare a partial log on the "
                         "images it covers)", flag_values=fv)
    return fv


def _print_robustness(pred_logs, cert_logs) -> None:
    """Per sigma, the empirical robust accuracy of the attacked prediction logs next to the certified accuracy of
    the certification log with the same sigma (or the only certification log given)."""
    attacked = [log for log in pred_logs if parse_attack(log.path) is not None]
    sigma_of = {log.path: log_sigma(log.path) for log in [*attacked, *cert_logs]}
    for sigma in sorted({sigma_of[log.path] for log in attacked}, key=lambda s: (s is None, s)):
        group = [log for log in attacked if sigma_of[log.path] == sigma]
        same = [log for log in cert_logs if sigma is not None and sigma_of[log.path] == sigma]
        certified = same[0] if len(same) == 1 else (cert_logs[0] if len(cert_logs) == 1 and not same else None)
        print(f"\nEmpirical robust accuracy (attacked PREDICT, an upper bound) vs certified accuracy (a lower bound)"
              f"{'' if sigma is None else f', sigma = {sigma}'}:")
        sys.stdout.write(robustness_table(group, certified))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``argv`` default ``sys.argv[1:]``); prints tables/summaries to stdout. Returns 0, or 2 after a
    one-line error on stderr."""
    fv = _flags()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(f"usage: {_PROG} LOG [LOG ...] [flags]\n\n{__doc__.splitlines()[0]}\n{fv.get_help()}")
        return 0
    try:
        try:
            paths = fv([_PROG, *map(str, argv)])[1:]
        except flags.Error as e:
            raise ValueError(f"{e} (see --help)") from None
        if not paths:
            raise ValueError("give at least one LOG (a certification or prediction TSV log)")
        labels = fv.labels if fv.labels is not None else list(paths)
        if len(labels) != len(paths):
            raise ValueError(f"{len(labels)} --labels for {len(paths)} logs; give one label per LOG")
        logs = [read_log(p) for p in paths]
        if fv.same_images:
            common = sorted(set.intersection(*(set(log.idx.tolist()) for log in logs)))
            if not common:
                raise ValueError(f"--same_images: the {len(logs)} logs have no idx in common")
            logs = [log.restrict(common) for log in logs]
            print(f"{len(common)} images every log has (idx {common[0]} to {common[-1]})")
        cert = [(log, lab) for log, lab in zip(logs, labels) if log.is_certification]
        pred = [(log, lab) for log, lab in zip(logs, labels) if not log.is_certification]
        if cert:
            cert_logs, cert_labels = [c[0] for c in cert], [c[1] for c in cert]
            radii = parse_radii(fv.radii) if fv.radii else default_radii(cert_logs)
            table = latex_table if fv.latex else markdown_table
            sys.stdout.write(table(cert_logs, cert_labels, radii, acr=not fv["no-acr"].value))
        elif fv.radii:
            parse_radii(fv.radii)  # still reject malformed input
        for log, label in zip(logs, labels):  # Sequential logs: samples per image, next to the table.
            if (samples := samples_summary(log)) is not None:
                print(format_samples_summary(samples, label))
        for log, label in pred:
            s = prediction_summary(log)
            print(f"{label}: n={s.n} accuracy={s.accuracy:.4f} abstention={s.abstention_rate:.4f} "
                  f"mean_time={s.mean_time:.3f}s")
        _print_robustness([log for log, _ in pred], [log for log, _ in cert])
        if fv.plot:
            if not cert:
                raise ValueError("--plot needs at least one certification log (with a radius column)")
            plot_certified_accuracy(cert, fv.plot, radii if fv.radii else None)
    except (ValueError, OSError, ImportError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, OSError) and error.filename is not None:
            message = f"{error.filename}: {error.strerror or error}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
