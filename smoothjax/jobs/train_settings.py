"""The record of a training run's settings, ``workdir/train_settings.json``: written at its first step, checked on
every resume.

Everything that changes the parameters a run ends with is recorded: model (and its normalisation and options),
sigma, loss with its options, data (name, split, size and a fingerprint of the examples, not a path), augmentation,
batch size, optimiser and schedule, seed and total steps. Resuming with any of them changed is a one-line ValueError
naming the setting and both values, before anything is written. Options that do not change the parameters
(checkpoint and log intervals, evaluation, devices, ``init_from``, which only seeds step 0) are not recorded.
A workdir of an earlier version has checkpoints but no record: the settings it was trained with are unknown beyond
``model.json`` (checked: model, sigma, data set), and the record is written at that resume, with a one-line note.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from smoothjax import data
from smoothjax.checkpointing import read_record, write_atomically

FILE = "train_settings.json"
_FINGERPRINT_EXAMPLES = 512  # evenly spaced examples hashed to tell one data set from another, cheaply
# The options of each loss, recorded with it (config.<name> sub-configs).
_LOSS_OPTIONS = {"smoothadv": "smoothadv", "siam": "siam", "consistency": "consistency", "macer": "macer"}
_SCHEDULE = ("learning_rate", "momentum", "weight_decay", "nesterov", "grad_clip_norm", "lr_schedule",
             "lr_step_epochs", "lr_decay", "lr_milestones")
# model.json keys that an earlier version's workdir records: compared on a legacy resume (record -> model.json key).
_LEGACY = {"model": "model", "sigma": "sigma", "dataset": "train_dataset"}


def settings(config, train_src, total_steps: int) -> dict:
    """The settings of the run ``config`` describes, as JSON values: what ``train_settings.json`` holds."""
    picks = np.unique(np.linspace(0, len(train_src) - 1, min(len(train_src), _FINGERPRINT_EXAMPLES)).astype(int))
    record = {
        "model": config.model, "model_kwargs": config.model_kwargs.to_dict(), "normalization": config.normalization,
        "dataset_stats": config.dataset_stats,
        "num_classes": config.num_classes, "sigma": float(config.sigma), "loss": config.loss,
        "dataset": config.dataset, "train_split": config.train_split, "num_train_examples": len(train_src),
        "data_fingerprint": data.fingerprint(train_src, picks), "augment": config.augment,
        "batch_size": config.batch_size, "seed": config.seed, "total_steps": int(total_steps),
        **{k: config[k] for k in _SCHEDULE},
        "self_training_teacher": bool(config.self_training_teacher),
        "dtype": config.get("dtype", "float32"),
    }
    if config.self_training_teacher:
        record["self_training_weight"] = config.self_training_weight
    option = _LOSS_OPTIONS.get(config.loss)
    if option is not None and option in config:
        record[f"{option}_options"] = config[option].to_dict()
    return json.loads(json.dumps(record, default=list))


def check(workdir, record: dict, legacy_spec: dict | None, resuming: bool) -> str | None:
    """Read-only: raises a one-line ValueError when ``workdir``'s recorded settings differ from ``record``.

    Returns None when the workdir's record equals ``record`` (or a fresh run will write it), or the note to print
    when a resumed workdir has no record (an earlier version's: only ``legacy_spec``, its model.json, is compared).
    """
    path = Path(workdir) / FILE
    if path.exists():
        old = read_record(path, "restore it or use a new --workdir")
    elif resuming:
        old = {k: legacy_spec[v] for k, v in _LEGACY.items() if legacy_spec and v in legacy_spec}
    else:
        return None
    for key in sorted(set(old) | set(record)):
        if key in old and key in record and old[key] != record[key]:
            raise ValueError(f"{workdir} was trained with {key}={old[key]!r}, this run has {key}={record[key]!r}; "
                             "resume with the same settings, or start a new --workdir (init_from= to fine-tune it)")
    if not path.exists():
        return (f"note: {workdir} has no {FILE} (an earlier version's run); its settings are recorded now and checked "
                "on every later resume")
    return None


def write(workdir, record: dict) -> None:
    """Writes ``workdir/train_settings.json`` atomically (call on process 0, after every check passed)."""
    write_atomically(Path(workdir) / FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
