"""``smoothjax.robustness_eval``, kept as it was imported before SIAM's evaluation became ``smoothjax.siam.evaluation``.

The accuracy grid lives in ``smoothjax.siam.evaluation`` and the job that writes its files in
``smoothjax.jobs.evaluate``; this module re-exports their public names so that existing imports keep working, the way
optax keeps old paths importable. The command line is now ``python evaluate.py --config=... --workdir=...`` with the
old flags under ``--config.evaluate.*`` (docs/siam.md).
"""

import sys

from smoothjax.jobs.evaluate import evaluate_workdir, write_results
from smoothjax.siam.evaluation import (ATTACKS, Programs, as_noise_sd, evaluate_dataset, evaluate_grid,
                                       evaluate_setting, noisy_apply_fn)

__all__ = ["ATTACKS", "Programs", "as_noise_sd", "evaluate_dataset", "evaluate_grid", "evaluate_setting",
           "evaluate_workdir", "noisy_apply_fn", "write_results"]

if __name__ == "__main__":
    sys.exit("python -m smoothjax.robustness_eval is now: python evaluate.py --config=configs/siam_cifar10.py "
             "--workdir=RUN --config.evaluate.<flag>=<value> (same flag names; see docs/siam.md)")
