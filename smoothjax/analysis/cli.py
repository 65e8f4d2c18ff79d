"""Command line of ``python -m smoothjax.analysis``: tables and summaries of certify / predict logs.

Certification logs give a certified-accuracy table (markdown or LaTeX; ``--plot`` writes a PNG); sequential logs
add samples per image; prediction logs give accuracy and abstention; attacked prediction logs (``predict_<attack
name>_sigma_<sigma>.tsv``) give the empirical robust accuracy per attack radius next to the certified accuracy of
the certification log with the same sigma.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from smoothjax.analysis.empirical import parse_attack, parse_sigma, robustness_table
from smoothjax.analysis.logs import read_log
from smoothjax.analysis.metrics import prediction_summary
from smoothjax.analysis.tables import default_radii, latex_table, markdown_table, parse_radii, \
    plot_certified_accuracy
from smoothjax.sample_usage import format_samples_summary, samples_summary


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; keep errors to one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m smoothjax.analysis",
        description="Certified-accuracy tables (markdown or LaTeX) and summaries of certify/predict logs.")
    parser.add_argument("logs", nargs="+", metavar="LOG", help="certification or prediction TSV logs")
    parser.add_argument("--radii", help="comma list (0,0.25,0.5) or start:stop:step (stop inclusive)")
    parser.add_argument("--latex", action="store_true", help="print a LaTeX table instead of markdown")
    parser.add_argument("--labels", nargs="+", help="one row label per LOG (default: the paths)")
    parser.add_argument("--plot", metavar="OUT.png", help="also write a certified-accuracy plot")
    parser.add_argument("--no-acr", action="store_true", help="omit the ACR column (reference layout)")
    return parser


def _print_robustness(pred_logs, cert_logs) -> None:
    """Per sigma, the empirical robust accuracy of the attacked prediction logs next to the certified accuracy of
    the certification log with the same sigma in its name (or the only certification log given)."""
    attacked = [log for log in pred_logs if parse_attack(log.path) is not None]
    for sigma in sorted({parse_sigma(log.path) for log in attacked}, key=lambda s: (s is None, s)):
        group = [log for log in attacked if parse_sigma(log.path) == sigma]
        same = [log for log in cert_logs if sigma is not None and parse_sigma(log.path) == sigma]
        certified = same[0] if len(same) == 1 else (cert_logs[0] if len(cert_logs) == 1 and not same else None)
        print(f"\nEmpirical robust accuracy (attacked PREDICT, an upper bound) vs certified accuracy (a lower bound)"
              f"{'' if sigma is None else f', sigma = {sigma}'}:")
        sys.stdout.write(robustness_table(group, certified))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints tables/summaries to stdout. Returns 0, or 2 after a one-line error."""
    args = _build_parser().parse_args(argv)
    try:
        labels = args.labels if args.labels is not None else list(args.logs)
        if len(labels) != len(args.logs):
            raise ValueError(f"{len(labels)} --labels for {len(args.logs)} logs; give one label per LOG")
        logs = [read_log(p) for p in args.logs]
        cert = [(log, lab) for log, lab in zip(logs, labels) if log.is_certification]
        pred = [(log, lab) for log, lab in zip(logs, labels) if not log.is_certification]
        if cert:
            cert_logs, cert_labels = [c[0] for c in cert], [c[1] for c in cert]
            radii = parse_radii(args.radii) if args.radii else default_radii(cert_logs)
            table = latex_table if args.latex else markdown_table
            sys.stdout.write(table(cert_logs, cert_labels, radii, acr=not args.no_acr))
        elif args.radii:
            parse_radii(args.radii)  # still reject malformed input
        for log, label in zip(logs, labels):  # Sequential logs: samples per image, next to the table.
            if (samples := samples_summary(log)) is not None:
                print(format_samples_summary(samples, label))
        for log, label in pred:
            s = prediction_summary(log)
            print(f"{label}: n={s.n} accuracy={s.accuracy:.4f} abstention={s.abstention_rate:.4f} "
                  f"mean_time={s.mean_time:.3f}s")
        _print_robustness([log for log, _ in pred], [log for log, _ in cert])
        if args.plot:
            if not cert:
                raise ValueError("--plot needs at least one certification log (with a radius column)")
            plot_certified_accuracy(cert, args.plot, radii if args.radii else None)
    except (ValueError, OSError, ImportError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, OSError) and error.filename is not None:
            message = f"{error.filename}: {error.strerror or error}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
