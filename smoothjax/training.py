"""Training steps: Gaussian-noise augmentation (Cohen et al. 2019) and a loss-agnostic data-parallel step.

The train step is written once, around a *loss function* with the signature::

    loss_fn(params, model_state, batch, key) -> (loss, (new_model_state, metrics))

``batch`` holds ``image`` (B, H, W, C) in [0, 1] and ``label`` (B,); ``key`` is a fresh PRNG key for this step;
``model_state`` holds the non-parameter collections (batch-norm statistics). Gaussian augmentation below is one
such loss; SmoothAdv and SIAM plug in their own without copying the loop.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from smoothjax.noise import add_gaussian_noise, check_sigma


class TrainState(flax.struct.PyTreeNode):
    """Everything a run carries from step to step; a plain pytree of arrays (what a checkpoint holds)."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any

    @property
    def variables(self) -> dict:
        """The Flax variables dict of the model (``params`` plus e.g. ``batch_stats``)."""
        return {"params": self.params, **self.model_state}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape) -> TrainState:
    """Initialises parameters (from ``key``) and optimizer state for images of ``image_shape`` = (H, W, C)."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params))


def learning_rate_schedule(*, learning_rate: float, steps_per_epoch: int, lr_schedule: str = "step",
                           lr_step_epochs: int = 30, lr_decay: float = 0.1, total_steps: int = 0,
                           lr_milestones=()) -> optax.Schedule:
    """Learning rate as a function of the step.

    ``"step"`` multiplies ``learning_rate`` by ``lr_decay`` every ``lr_step_epochs`` epochs (Cohen et al.: 0.1,
    divided by 10 every 30 epochs); ``"multistep"`` multiplies it by ``lr_decay`` at the start of each epoch in
    ``lr_milestones`` (SIAM: epochs 200 and 300); ``"cosine"`` anneals it to 0 over ``total_steps``;
    ``"constant"`` keeps it.
    """
    if lr_schedule == "multistep":
        milestones = sorted(int(m) for m in lr_milestones)
        if not milestones or milestones[0] < 1 or len(set(milestones)) != len(milestones):
            raise ValueError(f"lr_milestones={tuple(lr_milestones)!r} is not allowed; 'multistep' needs distinct "
                             "epochs >= 1")
        return optax.piecewise_constant_schedule(learning_rate, {m * steps_per_epoch: lr_decay for m in milestones})
    if lr_schedule == "step":
        return optax.exponential_decay(learning_rate, max(1, lr_step_epochs * steps_per_epoch), lr_decay,
                                       staircase=True)
    if lr_schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, max(1, total_steps))
    if lr_schedule == "constant":
        return optax.constant_schedule(learning_rate)
    raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of: step, multistep, cosine, constant")


def make_optimizer(*, learning_rate: float, steps_per_epoch: int, momentum: float = 0.9, weight_decay: float = 1e-4,
                   nesterov: bool = False, grad_clip_norm: float = 0.0,
                   **schedule_kwargs) -> optax.GradientTransformation:
    """SGD with momentum and coupled (PyTorch-style) weight decay, as in the reference CIFAR/ImageNet recipes.

    The decay term ``weight_decay * w`` is added to the gradient before momentum, as ``torch.optim.SGD`` does;
    ``grad_clip_norm > 0`` first rescales the loss gradient to global L2 norm at most ``grad_clip_norm``
    (``torch.nn.utils.clip_grad_norm_`` before ``SGD.step``, so before the decay term; SIAM: 0.05);
    ``schedule_kwargs`` go to ``learning_rate_schedule``.
    """
    if not (isinstance(grad_clip_norm, (int, float)) and grad_clip_norm >= 0):
        raise ValueError(f"grad_clip_norm={grad_clip_norm!r} is not allowed; it must be a number >= 0 (0 = off)")
    schedule = learning_rate_schedule(learning_rate=learning_rate, steps_per_epoch=steps_per_epoch, **schedule_kwargs)
    clip = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm > 0 else []
    return optax.chain(*clip, optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))


def apply_train_mode(model: nn.Module, params, model_state: dict, images: jax.Array, **kwargs):
    """Runs ``model`` in training mode; returns ``(logits, new_model_state)``.

    Collections in ``model_state`` (batch-norm statistics) are updated from this batch; a model without such
    state returns ``{}``. ``kwargs`` go to ``model.apply`` (e.g. ``rngs``).
    """
    mutable = list(model_state)
    out = model.apply({"params": params, **model_state}, images, train=True, mutable=mutable or False, **kwargs)
    return (out[0], dict(out[1])) if mutable else (out, {})


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of (B, K) logits against (B,) integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def gaussian_augmentation_loss(model: nn.Module, sigma: float) -> Callable:
    """The loss of Cohen et al. (2019): cross-entropy of the base classifier on ``x + N(0, sigma^2 I)``.

    Each call draws fresh noise for every image from ``key`` (pixel units, no clipping). Batch norm runs in
    training mode over the global batch. Returns a loss function with the signature of this module's docstring;
    its metrics are the mean loss and the accuracy on the noisy batch.
    """
    sigma = check_sigma(sigma)

    def loss_fn(params, model_state, batch, key):
        noisy = add_gaussian_noise(key, batch["image"], sigma)
        logits, new_state = apply_train_mode(model, params, model_state, noisy)
        loss = cross_entropy(logits, batch["label"])
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (new_state, {"loss": loss, "accuracy": accuracy})

    return loss_fn


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """Returns ``train_step(state, batch, key) -> (state, metrics)``, pure and ready for ``jax.jit``.

    The step's randomness is ``fold_in(key, state.step)``, so a run is a pure function of (initial state, batches,
    key): resuming from a checkpoint replays exactly the same noise. Under ``jit`` with the batch sharded over a
    mesh and the state replicated, gradients and batch statistics are computed over the global batch.
    """

    def train_step(state: TrainState, batch: dict, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (model_state, metrics)), grads = grad_fn(state.params, state.model_state, batch, step_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(apply_fn: Callable, sigma: float) -> Callable:
    """Returns ``eval_step(variables, batch, key) -> counts`` for clean and noisy accuracy.

    ``batch`` holds ``image``, ``label`` and a boolean ``mask`` (False on padding rows). The result holds integer
    sums over unmasked rows: ``count``, ``clean_correct`` (argmax of the base classifier on x) and
    ``noisy_correct`` (argmax on one draw x + N(0, sigma^2 I) per image).
    """
    sigma = check_sigma(sigma)

    def eval_step(variables, batch, key):
        labels, mask = batch["label"], batch["mask"]
        clean = jnp.argmax(apply_fn(variables, batch["image"]), -1) == labels
        noisy_images = add_gaussian_noise(key, batch["image"], sigma)
        noisy = jnp.argmax(apply_fn(variables, noisy_images), -1) == labels
        return {"count": jnp.sum(mask), "clean_correct": jnp.sum(clean & mask), "noisy_correct": jnp.sum(noisy & mask)}

    return eval_step
