"""Self-training (Carmon et al. 2019, used by SmoothAdv): unlabelled images pseudo-labelled by a teacher checkpoint.

Training alternates batches: even steps take the next labelled batch, odd steps the next batch of the unlabelled
source, whose labels are replaced by the teacher's argmax on the images as fed (after augmentation), and whose loss
is multiplied by ``self_training_weight``. One epoch is one pass over the labelled data plus as many unlabelled
batches, i.e. twice the labelled steps. The labels of the unlabelled source are never read. Both streams are pure
functions of (seed, step) (the unlabelled stream uses the config's seed + 1), so runs resume exactly.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax.numpy as jnp

from smoothjax import checkpointing
from smoothjax.models import make_apply_fn


def weighted(loss_fn: Callable) -> Callable:
    """Wraps ``loss_fn(params, model_state, batch, key)`` so that its loss is multiplied by ``batch["loss_weight"]``
    (a float scalar); the metrics are left as they are."""

    def wrapped(params, model_state, batch, key):
        loss, aux = loss_fn(params, model_state, batch, key)
        return loss * batch["loss_weight"], aux

    return wrapped


def pseudo_label_fn(apply_fn: Callable) -> Callable:
    """Returns ``label(variables, images) -> (B,) int32``, the teacher's argmax on clean (B, H, W, C) images."""

    def label(variables, images):
        return jnp.argmax(apply_fn(variables, images), axis=-1).astype(jnp.int32)

    return label


def load_teacher(workdir, *, image_shape, num_classes: int):
    """Returns ``(apply_fn, variables)`` of the teacher trained in ``workdir`` (its newest checkpoint), after checking
    that it takes images of ``image_shape`` and predicts ``num_classes`` classes (one-line ValueError otherwise)."""
    spec = checkpointing.read_model_spec(workdir)
    if spec is None:
        raise ValueError(f"self_training_teacher={str(workdir)!r} has no model.json: not a smoothjax training workdir")
    if list(spec["image_shape"]) != list(image_shape):
        raise ValueError(f"self_training_teacher={str(workdir)!r} takes images of shape {spec['image_shape']}, the "
                         f"training data has {list(image_shape)}")
    if int(spec["num_classes"]) != int(num_classes):
        raise ValueError(f"self_training_teacher={str(workdir)!r} predicts {spec['num_classes']} classes, the "
                         f"student {num_classes}")
    model, variables = checkpointing.load_model(workdir)
    return make_apply_fn(model), variables


def alternating_batches(labelled, unlabelled, start_step: int = 0) -> Iterator[tuple[dict, bool]]:
    """Yields ``(local_batch, is_pseudo)`` for steps ``start_step, start_step + 1, ...``: step s is labelled batch
    s // 2 of ``labelled`` when s is even and batch s // 2 of ``unlabelled`` when s is odd (both ``data.Loader``)."""
    lab = labelled.iterate(start_step=(start_step + 1) // 2)
    unl = unlabelled.iterate(start_step=start_step // 2)
    step = start_step
    while True:
        yield (next(unl), True) if step % 2 else (next(lab), False)
        step += 1


__all__ = ["alternating_batches", "load_teacher", "pseudo_label_fn", "weighted"]
