"""The jobs behind the scripts: config in, files out. Each reads its ``ml_collections`` config top to bottom and
calls the methods (``certification``, ``smoothadv``, ``siam``), which call the core (noise, models, data, training,
parallel, checkpointing).

* ``train``: ``train_and_evaluate(config, workdir)`` (``train.py``), with ``LOSSES``, the registry of training losses;
* ``certify``: ``certify_workdir(config, workdir)`` (``certify.py``), with ``certify_modes`` (one object per mode)
  and ``certify_log`` (the resumable log writer);
* ``evaluate``: ``evaluate_workdir(config, workdir)`` (``evaluate.py``), SIAM's accuracy grid under attack;
* ``reporting``: metrics.jsonl, TensorBoard and progress of all three.

Every job runs on one or many processes with the same idiom (``smoothjax.parallel``). ``define_flags`` and ``run``
are the absl command line the three scripts share; this module imports no JAX, so a script can define its flags
before JAX is loaded.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_JOBS = {"train": "train_and_evaluate", "certify": "certify_workdir", "evaluate": "evaluate_workdir"}


def _job_module(job: str):
    """The module of job ``job``, imported now (after flag parsing: the scripts import no JAX before)."""
    if job == "train":
        from smoothjax.jobs import train as module
    elif job == "certify":
        from smoothjax.jobs import certify as module
    else:
        from smoothjax.jobs import evaluate as module
    return module


def define_flags(workdir_help: str):
    """Defines the absl flags every script takes, ``--config`` (an ml_collections config file, ``configs/*.py``,
    overridable field by field with ``--config.<field>=<value>``, locked) and ``--workdir``; returns both holders."""
    config = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                             lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir


def run(job: str, argv, config, workdir: str):
    """Runs job ``job`` (``train``, ``certify`` or ``evaluate``, chosen by name) on ``config`` and ``workdir`` and
    returns its result. A bad setting, checkpoint or file ends the script with one line ``<job>.py: error: ...``
    (``SMOOTHJAX_DEBUG=1`` raises instead). The job module is imported only now, after flag parsing."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO.
    function = getattr(_job_module(job), _JOBS[job])
    try:
        return function(config, workdir)
    except (ValueError, OSError) as e:
        if os.environ.get("SMOOTHJAX_DEBUG"):
            raise
        sys.exit(f"{job}.py: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
