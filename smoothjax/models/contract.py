"""The one ``apply_fn`` convention: deterministic ``(variables, images)``, stochastic ``(variables, images, key)``.

* A deterministic base classifier is ``apply_fn(variables, images) -> logits`` (``make_apply_fn``): images
  (B, H, W, C) float in [0, 1], logits (B, K) float32. Certification, SmoothAdv's attacks and SIAM all take it.
* A stochastic one (SIAM's PNI / CPNI models, or any model with noise inside) takes its randomness as a third
  positional argument, ``apply_fn(variables, images, key) -> logits``, and is a pure function of the three
  (``make_stochastic_apply_fn``). It may accept the keyword ``input_noise: bool = True``; SIAM's ``single`` rule
  calls it with ``input_noise=False`` (its input noise off, its weight noise on).

Which one a function is: the attribute ``apply_fn.stochastic`` when set (``make_stochastic_apply_fn`` sets it,
False for a deterministic model), otherwise whether it accepts a third positional argument. SIAM's code calls
both through ``with_key``; averaging m > 1 passes of a deterministic function raises (the passes would be equal).
"""

from __future__ import annotations

import inspect
from typing import Callable

import flax.linen as nn


def takes_key(apply_fn: Callable) -> bool:
    """True when ``apply_fn`` accepts a third positional argument (the key of a stochastic pass)."""
    try:
        inspect.signature(apply_fn).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): call it as the deterministic contract
        return False
    return True


def is_stochastic(model_or_apply_fn) -> bool:
    """True when a model or an ``apply_fn`` draws noise from a key (see the module docstring), else False.

    A Flax module is stochastic when its class says so (``NoisyCifarResNet.stochastic``); a function when its
    ``stochastic`` attribute is True or, without that attribute, when it takes a key (``takes_key``).
    """
    if isinstance(model_or_apply_fn, nn.Module):
        return bool(getattr(model_or_apply_fn, "stochastic", False))
    flag = getattr(model_or_apply_fn, "stochastic", None)
    return bool(flag) if flag is not None else takes_key(model_or_apply_fn)


def with_key(apply_fn: Callable) -> Callable:
    """``apply_fn`` as one stochastic pass ``f(variables, images, key, input_noise=True) -> logits``.

    A function that takes a key is returned unchanged; a deterministic ``apply_fn(variables, images)`` is wrapped
    to ignore ``key`` and ``input_noise`` (every pass is then the same deterministic pass).
    """
    if takes_key(apply_fn):
        return apply_fn

    def f(variables, images, key, input_noise: bool = True):
        del key, input_noise
        return apply_fn(variables, images)

    f.stochastic = False
    return f


def check_passes(apply_fn: Callable, num_samples: int) -> None:
    """One-line ValueError when ``num_samples`` > 1 passes of a deterministic ``apply_fn`` would be averaged."""
    if num_samples > 1 and not is_stochastic(apply_fn):
        raise ValueError(f"num_samples={num_samples} passes of a deterministic apply_fn(variables, images) would all "
                         "be equal; use num_samples=1, a stochastic apply_fn(variables, images, key) "
                         "(models.make_stochastic_apply_fn), or Gaussian input noise (siam.noisy_apply_fn)")
