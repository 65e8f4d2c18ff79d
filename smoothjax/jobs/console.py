"""The console scripts ``smoothjax-train`` and ``smoothjax-certify``: train.py's and certify.py's command lines,
installed with the package (``[project.scripts]``), so that a job runs from any directory:

  smoothjax-train --config=/path/to/configs/digits.py --workdir=runs/digits
  smoothjax-certify --config=/path/to/configs/digits.py --workdir=runs/digits

Flags, behaviour and output are the scripts' (their docstrings document them); like them, this module imports no JAX
before the flags are parsed.
"""

from __future__ import annotations

from absl import app

from smoothjax import analysis, jobs


def train() -> None:
    """``smoothjax-train``: trains a base classifier (train.py)."""
    config, workdir = jobs.define_flags("Directory for checkpoints, metrics and logs.")

    def main(argv):
        results = jobs.run("train", argv, config.value, workdir.value)
        if "clean_accuracy" in results:
            print(f"final (step {results['step']}): clean accuracy {results['clean_accuracy']:.4f}, noisy accuracy "
                  f"(sigma={config.value.sigma}) {results['noisy_accuracy']:.4f}", flush=True)

    app.run(main, flags_parser=jobs.parse_flags)


def certify() -> None:
    """``smoothjax-certify``: certifies or predicts with a trained run's smoothed classifier (certify.py)."""
    config, workdir = jobs.define_flags("Training run directory to certify.")

    def main(argv):
        path = jobs.run("certify", argv, config.value, workdir.value)
        with jobs.one_line_errors("certify"):  # a log damaged since it was written: one line, not a traceback
            report(path)

    app.run(main, flags_parser=jobs.parse_flags)


def report(path) -> None:
    """Prints the certified-accuracy table (or prediction accuracy) of the certify log at ``path``, on process 0."""
    import jax

    if jax.process_index() != 0:  # process 0 wrote the log and reports it
        return
    log, settings = analysis.read_log(path), analysis.read_settings(path)  # what was run: the sidecar, not the name
    if log.is_certification:
        label = f"&sigma; = {analysis.format_sigma(settings['sigma'])}"
        print(analysis.markdown_table([log], [label], analysis.default_radii([log]), acr=True))
        print(f"{len(log)} images; certified accuracy at radius 0: {analysis.certified_accuracy(log, [0.0])[0]:.3f}, "
              f"average certified radius (ACR): {analysis.average_certified_radius(log):.3f}")
        if (samples := analysis.samples_summary(log)) is not None:  # sequential mode
            print(analysis.format_samples_summary(samples))
    else:
        summary = analysis.prediction_summary(log)
        print(f"{summary.n} images; accuracy {summary.accuracy:.3f}, abstention rate {summary.abstention_rate:.3f}")
        if settings.get("attack", "none") != "none":
            print(f"empirical robust accuracy at radius {settings['epsilon']} ({settings['attack']}): "
                  f"{summary.accuracy:.3f}")
