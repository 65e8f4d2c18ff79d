"""The jobs behind the scripts: config in, files out. Each reads its ``ml_collections`` config top to bottom and
calls the methods (``certification``, ``smoothadv``, ``siam``), which call the core (noise, models, data, training,
parallel, checkpointing).

* ``train``: ``train_and_evaluate(config, workdir)`` (``train.py``), with ``LOSSES``, the registry of training losses;
* ``certify``: ``certify_workdir(config, workdir)`` (``certify.py``), with ``certify_modes`` (one object per mode)
  and ``certify_log`` (the resumable log writer);
* ``evaluate``: ``evaluate_workdir(config, workdir)`` (``evaluate.py``), SIAM's accuracy grid under attack;
* ``reporting``: metrics.jsonl, TensorBoard and progress of all three.

Every job runs on one or many processes with the same idiom (``smoothjax.parallel``). ``define_flags``,
``parse_flags``, ``run`` and ``one_line_errors`` are the absl command line the three scripts share: a bad flag,
config file or config field, a bad setting, an unreadable file or a damaged zip ends the script with one line
naming it and a non-zero exit status. This module imports no JAX, so a script can define its flags before JAX is
loaded.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zipfile
from pathlib import Path

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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (``app.run(main, flags_parser=jobs.parse_flags)``) with one-line errors: a missing or
    unloadable config file, an unknown ``--config.<field>`` or a bad flag value exits with ``<script>: error: ...``
    (status 1) naming the path, field or flag, instead of a traceback."""
    prog = Path(argv[0]).name if argv else "script"
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]
            if not Path(path).is_file():
                sys.exit(f"{prog}: error: config file {path} does not exist (--config=configs/<name>.py)")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.exit(f"{prog}: error: {message} (see --helpfull)")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config does not have
        field = str(e).strip("\"'")
        given = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.") and
                 a.split("=", 1)[0].rsplit(".", 1)[-1] == field] or [f"--config.{field}"]
        sys.exit(f"{prog}: error: {given[0]}: the config has no field {field!r}; see the config file and "
                 "configs/common.py for the fields")
    except Exception as e:  # the config file itself failed to load (syntax error, bad import, ...)
        message = str(e).splitlines()[0] if str(e) else ""
        sys.exit(f"{prog}: error: the config could not be loaded ({type(e).__name__}: {message})")


@contextlib.contextmanager
def one_line_errors(job: str):
    """Turns a ValueError, OSError or ``zipfile.BadZipFile`` raised inside into ``<job>.py: error: <first line>``
    and exit status 1 (``SMOOTHJAX_DEBUG=1`` raises instead). An OSError names its path."""
    try:
        yield
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        if os.environ.get("SMOOTHJAX_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) and e.filename is not None:
            message = f"{e.filename}: {e.strerror or type(e).__name__}"
        sys.exit(f"{job}.py: error: {message}")


def run(job: str, argv, config, workdir: str):
    """Runs job ``job`` (``train``, ``certify`` or ``evaluate``, chosen by name) on ``config`` and ``workdir`` and
    returns its result. A bad setting, checkpoint or file ends the script with one line ``<job>.py: error: ...``
    (``one_line_errors``). The job module is imported only now, after flag parsing."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO.
    function = getattr(_job_module(job), _JOBS[job])
    with one_line_errors(job):
        return function(config, workdir)
