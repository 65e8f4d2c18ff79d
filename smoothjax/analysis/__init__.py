"""Reading and summarising certification / prediction logs (Cohen et al. 2019 TSV format).

A *certification log* is a tab-separated file with header ``idx label predict radius correct time``;
a *prediction log* has ``idx label predict correct time``. ``predict == -1`` means the smoothed
classifier abstained. Modules:

* ``logs``: ``read_log`` / ``EvalLog`` / ``parse_time``;
* ``metrics``: certified accuracy per radius, average certified radius (ACR), prediction summaries;
* ``tables``: markdown / LaTeX tables that reproduce, byte for byte, the layout of the reference
  ``analysis/{markdown,latex}/vary_noise_*`` files of locuslab/smoothing, and certified-accuracy plots;
* ``empirical``: empirical robust accuracy of attacked PREDICT logs per radius, next to the certified accuracy;
* ``samples_summary`` (from ``smoothjax.sample_usage``): forward passes per image of sequential logs.

Command line::

    python -m smoothjax.analysis LOG [LOG ...] [--radii 0,0.25,0.5 | start:stop:step] [--latex]
                                 [--labels L1 L2 ...] [--plot out.png] [--no-acr]

Attacked prediction logs among the LOGs get the empirical-robustness table next to the certification log of the
same sigma.
"""

from smoothjax.analysis.cli import main
from smoothjax.analysis.empirical import attack_name, empirical_robust_accuracy, parse_attack, parse_sigma, \
    robustness_table
from smoothjax.analysis.logs import EvalLog, parse_time, read_log
from smoothjax.analysis.metrics import PredictionSummary, average_certified_radius, certified_accuracy, \
    certified_accuracy_matrix, envelope, prediction_summary
from smoothjax.analysis.tables import default_radii, latex_table, markdown_table, parse_radii, \
    plot_certified_accuracy
from smoothjax.sample_usage import SamplesSummary, format_samples_summary, samples_summary

__all__ = [
    "EvalLog", "PredictionSummary", "SamplesSummary", "attack_name", "average_certified_radius",
    "certified_accuracy", "certified_accuracy_matrix", "default_radii", "empirical_robust_accuracy", "envelope",
    "format_samples_summary", "latex_table", "main", "markdown_table", "parse_attack", "parse_radii", "parse_sigma",
    "parse_time", "plot_certified_accuracy", "prediction_summary", "read_log", "robustness_table", "samples_summary",
]
