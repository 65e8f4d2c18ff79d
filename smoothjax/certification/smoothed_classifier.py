"""``SmoothedClassifier``: a base classifier and its noise level held together, with jitted CERTIFY and PREDICT.

    from smoothjax import SmoothedClassifier
    g = SmoothedClassifier(apply_fn, variables, sigma=0.25)               # num_classes from jax.eval_shape
    cert = g.certify(key, images, n0=100, n=100_000, alpha=0.001, batch_size=1000)   # == certification.certify
    pred = g.predict(key, images, n=1000, alpha=0.001, batch_size=1000)             # == certification.predict

Each method returns exactly what the module function of the same name returns for the same arguments (same keys,
same draws, same float64 host statistics). The work is jitted once per image shape and (n0, n, batch_size): alpha
is an operand of the host callback (``_host_stats.alpha_operand``), so a new alpha reuses the compiled program. A
batch sharded over a mesh axis (Explicit or Auto) is certified on each device's own rows and the results stay
sharded like it; inside a jit of your own under Auto axes, name the axis (``batch_axis="batch"``).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from smoothjax import parallel
from smoothjax.certification import _host_stats as H
from smoothjax.certification import cohen, sound_noise
from smoothjax.certification._sampling import (as_keys, check_alpha, check_int, check_positive_sigma,
                                               sample_counts)


class SmoothedClassifier:
    """The Gaussian-smoothed classifier ``g(x) = argmax_c P[f(x + eps) = c]``, ``eps ~ N(0, sigma^2 I)``.

    Args:
      apply_fn: the base classifier ``f``: ``apply_fn(variables, images (m, H, W, C) in [0, 1]) -> logits (m, K)``.
      variables: its variables (any pytree), passed to ``apply_fn`` unchanged.
      sigma: noise standard deviation in pixel units, > 0.
      num_classes: K; None = read from ``jax.eval_shape(apply_fn, ...)`` on the first call (no computation).
      sound: draw ``sound_noise`` grid noise (images on the 1/255 grid), as ``certification.certify(sound=True)``.
    """

    def __init__(self, apply_fn: Callable, variables, sigma: float, num_classes: int | None = None, *,
                 sound: bool = False):
        if not callable(apply_fn):
            raise ValueError(f"apply_fn={apply_fn!r} is not allowed; it must be callable (variables, images) -> logits")
        self.apply_fn, self.variables = apply_fn, variables
        self.sigma = check_positive_sigma(sigma)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, 2)
        self.sound = bool(sound)
        static = ("n0", "n", "batch_size", "num_classes", "where")
        self._certify = jax.jit(self._certify_impl, static_argnames=static)
        self._predict = jax.jit(self._predict_impl, static_argnames=static[1:])
        self._counts = jax.jit(self._counts_impl, static_argnames=static[1:])

    def classes(self, x) -> int:
        """K, the number of logits ``apply_fn`` returns for images shaped like ``x`` (one image or a batch)."""
        if self.num_classes is None:
            x = jnp.asarray(x)
            image = jax.ShapeDtypeStruct((1, *x.shape[-3:]), jnp.float32)
            out = jax.eval_shape(self.apply_fn, self.variables, image)
            if len(getattr(out, "shape", ())) != 2 or out.shape[1] < 2:
                raise ValueError(f"apply_fn output shape {getattr(out, 'shape', out)} is not allowed for one image; "
                                 "need logits (1, K) with K >= 2, or pass num_classes")
            self.num_classes = int(out.shape[1])
        return self.num_classes

    def _prepare(self, key, x, batch_axis):
        x = jnp.asarray(x)
        keys = as_keys(key, x)
        if self.sound:
            sound_noise.check_on_grid(x)
        if x.ndim != 4:
            return keys, x, None
        if batch_axis is not None:
            return keys, x, parallel.named_batch_axis(x, batch_axis)
        where = parallel.batch_axis(x)
        return keys, x, (where if where[0] is not None else None)

    def certify(self, key, x, *, n0: int, n: int, alpha: float, batch_size: int,
                batch_axis=None) -> cohen.Certificate:
        """``certification.certify(key, apply_fn, variables, x, sigma=sigma, ...)``: the same ``Certificate`` (its
        guarantee: with probability >= 1 - alpha, a non-abstaining prediction is g's on the L2 ball of ``radius``).
        ``batch_axis``: as in ``certification.sample_counts`` (for Auto axes inside a jit of your own)."""
        keys, x, where = self._prepare(key, x, batch_axis)
        return self._certify(self.variables, keys, x, H.alpha_operand(check_alpha(alpha)), n0=check_int("n0", n0, 1),
                             n=check_int("n", n, 1), batch_size=check_int("batch_size", batch_size, 1),
                             num_classes=self.classes(x), where=where)

    def predict(self, key, x, *, n: int, alpha: float, batch_size: int, batch_axis=None) -> jax.Array:
        """``certification.predict``: int32 class per image, ``ABSTAIN`` (-1) to abstain (wrong with prob. <= alpha)."""
        keys, x, where = self._prepare(key, x, batch_axis)
        return self._predict(self.variables, keys, x, H.alpha_operand(check_alpha(alpha)), n=check_int("n", n, 1),
                             batch_size=check_int("batch_size", batch_size, 1), num_classes=self.classes(x),
                             where=where)

    def sample_counts(self, key, x, *, num: int, batch_size: int, batch_axis=None) -> jax.Array:
        """``certification.sample_counts``: int32 (K,) or (B, K) counts of the argmax over ``num`` noisy copies."""
        keys, x, where = self._prepare(key, x, batch_axis)
        return self._counts(self.variables, keys, x, n=check_int("num", num, 1),
                            batch_size=check_int("batch_size", batch_size, 1), num_classes=self.classes(x), where=where)

    # Jitted bodies: alpha words are operands, the rest static.
    def _certify_impl(self, variables, keys, x, words, *, n0, n, batch_size, num_classes, where):
        return cohen.certify_keyed(keys, x, variables, words, apply_fn=self.apply_fn, sigma=self.sigma, n0=n0, n=n,
                                   batch_size=batch_size, num_classes=num_classes, sound=self.sound, where=where)

    def _predict_impl(self, variables, keys, x, words, *, n, batch_size, num_classes, where):
        return cohen.predict_keyed(keys, x, variables, words, apply_fn=self.apply_fn, sigma=self.sigma, n=n,
                                   batch_size=batch_size, num_classes=num_classes, sound=self.sound, where=where)

    def _counts_impl(self, variables, keys, x, *, n, batch_size, num_classes, where):
        count = functools.partial(sample_counts, apply_fn=self.apply_fn, sigma=self.sigma, num=n,
                                  batch_size=batch_size, num_classes=num_classes, sound=self.sound)
        if x.ndim == 3:
            return count(keys, variables=variables, x=x)
        return parallel.per_shard(lambda k, xs, v: count(k, variables=v, x=xs), x, keys, x, replicated=(variables,),
                                  where=where)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma}, num_classes={self.num_classes}, sound={self.sound})"
