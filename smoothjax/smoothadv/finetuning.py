"""Fine-tuning from a trained run (``config.init_from``): copy its variables, with a new head for a new class count.

The SmoothAdv pre-training recipe trains on ImageNet 32x32 (1000 classes) and fine-tunes the same network on
CIFAR-10: every variable is copied except the classifier's kernel and bias, whose class axis changes size and which
keep their fresh initialisation. Optimizer state and the step start from scratch.
"""

from __future__ import annotations

import jax
import numpy as np

from smoothjax import checkpointing


def transfer_variables(pretrained: dict, target: dict, *, old_classes: int, new_classes: int) -> tuple[dict, list]:
    """Returns ``(variables, reinitialised)``: ``target``'s structure filled with ``pretrained``'s values.

    Args:
      pretrained: Flax variables of the trained model (NumPy or JAX leaves).
      target: freshly initialised variables of the model to fine-tune (same architecture); ``jax.ShapeDtypeStruct``
        leaves work too (a dry run that only checks).
      old_classes, new_classes: class counts of the two models.

    Returns:
      ``variables`` (pretrained values, except the head's leaves when the class count differs, which keep their
      ``target`` values) and ``reinitialised``, the key paths (strings) of the leaves that were not copied.

    Raises a one-line ValueError when the two trees differ in structure, or a leaf differs in shape other than a
    head leaf whose last axis is ``old_classes`` in ``pretrained`` and ``new_classes`` in ``target``.
    """
    old = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(pretrained)}
    new_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(target)]
    missing = [p for p in new_paths if p not in old]
    extra = [p for p in old if p not in set(new_paths)]
    if missing or extra:
        what = f"the model has {missing[0]} which the checkpoint lacks" if missing else \
            f"the checkpoint has {extra[0]} which the model lacks"
        raise ValueError(f"init_from: the checkpoint is of another architecture ({what})")
    reinitialised = []

    def pick(path, fresh):
        key = jax.tree_util.keystr(path)
        value = old[key]
        if tuple(np.shape(value)) == tuple(fresh.shape):
            return np.asarray(value, dtype=fresh.dtype)
        is_head = (np.ndim(value) == fresh.ndim and np.shape(value)[:-1] == tuple(fresh.shape[:-1])
                   and np.shape(value)[-1] == old_classes and fresh.shape[-1] == new_classes
                   and old_classes != new_classes)
        if not is_head:
            raise ValueError(f"init_from: {key} has shape {np.shape(value)} in the checkpoint and {tuple(fresh.shape)}"
                             f" in the model; only the classifier head may differ (classes {old_classes} -> "
                             f"{new_classes})")
        reinitialised.append(key)
        return fresh

    variables = jax.tree_util.tree_map_with_path(pick, target)
    return variables, reinitialised


def read_pretrained(workdir, spec: dict) -> tuple[dict, int]:
    """Loads the variables of the newest checkpoint of training run ``workdir`` as NumPy arrays and returns them with
    that run's class count. ``spec`` describes the run being started (``model``, ``model_kwargs``, ``image_shape``),
    which must agree with ``workdir/model.json``; the class count and normalisation constants may differ. Raises a
    one-line ValueError otherwise, or when the checkpoint is missing or damaged."""
    old_spec = checkpointing.read_model_spec(workdir)
    if old_spec is None:
        raise ValueError(f"init_from={str(workdir)!r} has no model.json: not a smoothjax training workdir")
    for key in ("model", "model_kwargs"):
        if old_spec.get(key) != spec.get(key):
            raise ValueError(f"init_from={str(workdir)!r} holds {key}={old_spec.get(key)!r}, this run has "
                             f"{key}={spec.get(key)!r}; fine-tuning needs the same architecture")
    if list(old_spec.get("image_shape", [])) != list(spec["image_shape"]):
        raise ValueError(f"init_from={str(workdir)!r} was trained on images of shape {old_spec.get('image_shape')}, "
                         f"this run's are {spec['image_shape']}")
    try:
        pretrained = checkpointing.load_variables(workdir)
    except ValueError:
        raise
    except Exception as e:  # orbax raises many types for a damaged checkpoint.
        raise ValueError(f"init_from={str(workdir)!r}: its checkpoint cannot be loaded ({type(e).__name__})") from None
    return pretrained, int(old_spec["num_classes"])
