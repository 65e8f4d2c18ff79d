"""Reading and summarising certification / prediction logs (Cohen et al. 2019 TSV format).

``logs`` is the one definition of the log format: the names, headers and rows certify.py writes, the settings
sidecar, and ``read_log`` / ``EvalLog`` / ``parse_time``. ``predict == -1`` means the smoothed classifier abstained.

* ``metrics``: certified accuracy per radius, average certified radius (ACR), prediction summaries, samples per
  image of sequential logs;
* ``tables``: markdown / LaTeX tables that reproduce, byte for byte, the layout of the reference
  ``analysis/{markdown,latex}/vary_noise_*`` files of locuslab/smoothing, and certified-accuracy plots;
* ``empirical``: empirical robust accuracy of attacked PREDICT logs per radius, next to the certified accuracy;
* ``cli``: ``python -m smoothjax.analysis LOG [LOG ...] [--radii=...] [--latex] [--labels=...] [--plot=...]``.

Nothing here imports JAX: logs can be read and tabulated anywhere.
"""

from smoothjax.analysis.cli import main
from smoothjax.analysis.empirical import empirical_robust_accuracy, robustness_table
from smoothjax.analysis.logs import (COLUMNS, REQUIRED, EvalLog, attack_name, format_row, format_sigma, header,
                                     log_name, log_sigma, parse_attack, parse_log, parse_sigma, parse_time,
                                     read_log, read_settings, settings_path)
from smoothjax.analysis.metrics import (PredictionSummary, SamplesSummary, as_log, average_certified_radius,
                                        certified_accuracy, certified_accuracy_matrix, envelope, prediction_summary,
                                        samples_summary)
from smoothjax.analysis.tables import (default_radii, format_samples_summary, latex_table, markdown_table,
                                       parse_radii, plot_certified_accuracy)

__all__ = [
    "COLUMNS", "EvalLog", "PredictionSummary", "REQUIRED", "SamplesSummary", "as_log", "attack_name",
    "average_certified_radius", "certified_accuracy", "certified_accuracy_matrix", "default_radii",
    "empirical_robust_accuracy", "envelope",
    "format_row", "format_samples_summary", "format_sigma", "header", "latex_table", "log_name", "log_sigma", "main",
    "markdown_table", "parse_attack", "parse_log", "parse_radii", "parse_sigma", "parse_time",
    "plot_certified_accuracy", "prediction_summary", "read_log", "read_settings", "robustness_table",
    "samples_summary", "settings_path",
]
