"""Trains a base classifier for randomized smoothing with Gaussian noise augmentation.

  python train.py --config=configs/digits.py --workdir=runs/digits
  python train.py --config=configs/cifar10.py:sigma=0.50 --workdir=runs/cifar10_s050 --config.batch_size=128

Any config field can be overridden with --config.<field>=<value>. Killed and restarted with the same command, a
run resumes from its newest checkpoint in --workdir and ends exactly where an uninterrupted run would.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO.
    from smoothjax.train_loop import train_and_evaluate  # After flag parsing: JAX reads XLA_FLAGS on import.

    try:
        results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except ValueError as e:
        if os.environ.get("SMOOTHJAX_DEBUG"):
            raise
        sys.exit(f"train.py: error: {e}")
    if "clean_accuracy" in results:
        print(f"final (step {results['step']}): clean accuracy {results['clean_accuracy']:.4f}, noisy accuracy "
              f"(sigma={_CONFIG.value.sigma}) {results['noisy_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    app.run(main)
