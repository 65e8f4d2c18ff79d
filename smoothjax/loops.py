"""Attack step loops: unrolled in Python on XLA:CPU, ``lax.fori_loop`` elsewhere, with an explicit override.

Gradients inside a ``lax`` loop body hit a slow path on XLA:CPU (docs/performance.md), so the attacks' T steps are
unrolled there; on GPU/TPU unrolling only makes compile time grow with T (the ResNet-20 SmoothAdv step: 3.7 s at
T = 1, 17.8 s at T = 20), so the steps run in a ``fori_loop`` whose body compiles once. ``unroll`` chooses:
None (default) = unroll on the CPU backend only, True = always unroll, False = always loop. Both give the same
result: the body sees the step index t as a Python int (unrolled) or a traced int32 (loop), and every use of t in
the attacks (``jax.random.fold_in(key, t)``, a table of per-step rates) gives the same values either way.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax

Carry = TypeVar("Carry")


def resolve_unroll(unroll: bool | None) -> bool:
    """True when the step loop is unrolled: ``unroll`` itself, or for None whether JAX's default backend is the
    CPU. One-line ValueError for anything but None, True or False."""
    if unroll is None:
        return jax.default_backend() == "cpu"
    if not isinstance(unroll, bool):
        raise ValueError(f"unroll={unroll!r} is not allowed; use None (unroll on CPU only), True or False")
    return unroll


def step_loop(body: Callable[[int, Carry], Carry], init: Carry, num_steps: int, *, unroll: bool | None) -> Carry:
    """``carry = body(t, carry)`` for t = 0 .. num_steps - 1 from ``init``; the final carry.

    ``num_steps`` is a static int >= 0. Unrolled (``resolve_unroll(unroll)``), t is a Python int; otherwise
    ``jax.lax.fori_loop`` runs the body with t a traced int32 scalar, so the carry must keep its shapes and dtypes.
    """
    if resolve_unroll(unroll):
        carry = init
        for t in range(num_steps):
            carry = body(t, carry)
        return carry
    return jax.lax.fori_loop(0, num_steps, body, init)
