"""Sequential certification: CERTIFY's guarantee from as few noise draws as the image needs (Voracek, NeurIPS 2024).

Selection is CERTIFY's (``n0`` draws, guess ``c_A``). Estimation then draws ``batch_size`` noisy copies at a time
and, after each batch, looks at an anytime-valid (1 - alpha) confidence sequence ``(L_t, U_t)`` for
``p_A = P[f(x + eps) = c_A]`` (``confidence_sequences``: the KT betting CS by default, or Bonferroni
Clopper-Pearson over the checking times), or, with ``method="grid"``, at one anytime-valid test per grid threshold
(``grid_tests``: ``L_t`` is then ``p_g`` of the largest radius certified so far, no union bound, and the
tests spend their power on the thresholds; fewer draws for the same certified accuracy). With the grid thresholds ``p_g = Phi(r_g / sigma)`` of the radii
``r_1 < ... < r_G``, it stops after the first batch where

* every grid radius that can still be certified is certified (``L_t >= p_g``): the next radius above the largest
  certified one is given up on by the ``futility`` rule, or
* ``max_samples`` estimation draws are spent.

Futility rules (when to give up on the next radius g; both also give up when ``U_t < p_g``):

* ``"exact"``: only when g is unreachable even if *every* remaining draw hits ``c_A`` (a count argument). Never
  gives up on a radius the remaining budget could still certify, but an image whose ``p_A`` sits just below
  ``p_g`` runs until ``U_t`` excludes ``p_g``, often to ``max_samples``.
* ``"projected"`` (default): also when g would not be certified at the next check nor at ``max_samples`` if the
  misses went on at ``r``, the one-sided Clopper-Pearson *lower* bound on the miss rate ``1 - p_A`` at level
  ``futility_level`` (``projected_failures_table``): optimistic for the image, but not the all-hits worst case.
  It may give up on a radius that more draws would have certified (more often the larger ``futility_level``; the
  level is pointwise, looked at after every batch), never the reverse.

Validity does not depend on the stopping rule: the confidence sequence holds at every t simultaneously, so on the
event ``{for all t: L_t <= p_A}``, of probability >= 1 - alpha, every certificate below is correct whatever rule
(exact, projected, or any other function of the data so far) chose when to stop. A futility rule only decides
how many draws are spent and which radii are given up; it never makes a bound larger.

The decisions are integer comparisons of the hit count against tables computed once on the host in float64
(``confidence_sequences.decision_tables``), so the loop (``lax.while_loop``) is exact, jittable, vmappable with
per-image stopping (a done image keeps its state while the others continue) and needs no host calls; the final
bound and radius are one float64 host call after it. The futility table is integer too (computed on the host).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats

from smoothjax.certification import _host_stats as H
from smoothjax.certification import confidence_sequences as cs
from smoothjax.certification import grid_tests, sound_noise
from smoothjax.certification._sampling import (as_keys, check_alpha, check_int, check_positive_sigma, chunk_counts,
                                               counts_one)

METHODS = cs.METHODS + ("grid",)
FUTILITY_RULES = ("projected", "exact")
FUTILITY_LEVEL = 0.01  # delta of the projected futility rule (tuned on digits, benchmarks/sequential_*)


class SequentialCertificate(NamedTuple):
    """Result of ``certify_sequential``: the fields of ``cohen.Certificate`` plus the draws used.

    Attributes:
      prediction: int32 certified class, -1 when abstaining.
      radius: float32 certified L2 radius in pixel units, rounded down; 0 when abstaining.
      p_a_lower: float32 lower bound on P[f(x + eps) = guess] valid at the stopping time; rounded down.
      count: int32 hits of ``guess`` among the estimation draws.
      guess: int32 ``c_A`` from the ``n0`` selection draws.
      num_samples: int32 forward passes spent on the image: ``n0`` + estimation draws (a multiple of ``batch_size``
        or ``max_samples``).
    """

    prediction: jax.Array
    radius: jax.Array
    p_a_lower: jax.Array
    count: jax.Array
    guess: jax.Array
    num_samples: jax.Array


def check_radii(radii) -> tuple:
    """The radius grid as a tuple of floats; raises a one-line ValueError unless finite, >= 0, strictly increasing."""
    try:
        values = np.asarray(radii, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"radii={radii!r} is not allowed; need a non-empty increasing list of radii >= 0") from None
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(np.diff(values) <= 0):
        raise ValueError(f"radii={radii!r} is not allowed; need a non-empty strictly increasing list of finite radii "
                         ">= 0 (pixel units)")
    return tuple(float(v) for v in values)


def projected_failures_table(checks, s_lower, level: float) -> np.ndarray:
    """The ``projected`` futility table: most failures after each check from which a radius is still *plausible*.

    Args:
      checks: (K,) increasing trial counts ``t_1 < ... < t_K`` (K >= 1).
      s_lower: (K, G) the certification table (``L_{t_j} >= p_g`` iff ``S >= s_lower[j, g]``).
      level: delta in (0, 1), the one-sided level of the optimistic rate.

    Returns:
      int64 (K + 1, G): row ``k + 1`` is for the state after check ``k`` (row 0, before any draw: the most
      failures any check allows; row K: -1). With ``F`` failures in ``t_k`` draws, let ``r(F) = 0`` if ``F = 0``
      else ``Beta.ppf(delta; F, t_k - F + 1)``, the one-sided Clopper-Pearson *lower* bound at level delta on the
      miss rate ``1 - p_A``: the most optimistic rate the data leave plausible. Radius g is plausible iff the next
      check j = k + 1 or the last one j = K would certify it if misses continued at that rate,
      ``F + r(F) (t_j - t_k) <= t_j - s_lower[j, g]`` (the allowance ``t_j - s_lower[j, g]`` is close to convex
      in ``t_j``, so these two ends are where the projection is most favourable); the table holds the largest
      such F (-1: none). The left side increases with F, so the plausible set is down-closed.
    """
    checks = np.asarray(checks, np.int64)
    gain = checks[:, None] - np.asarray(s_lower, np.int64)  # a check j certifies g iff failures <= gain[j, g]
    num_checks, num_radii = gain.shape
    table = np.full((num_checks + 1, num_radii), -1, np.int64)
    table[0] = np.max(gain, axis=0)
    if num_checks == 1:
        return table
    t = checks[:-1, None]  # (K - 1, 1): after check k < K - 1
    ends = [(checks[1:, None] - t, gain[1:]), (checks[-1] - t, gain[-1][None, :])]  # (next check, last check)

    def implausible(f):  # f (K - 1, G) candidate failure counts in [0, t]
        rate = np.where(f > 0, scipy.special.betaincinv(np.maximum(f, 1), t - f + 1.0, level), 0.0)
        return ~np.any([f + rate * ahead <= allowed for ahead, allowed in ends], axis=0)

    table[1:-1] = H.first_true(implausible, np.zeros((num_checks - 1, num_radii), np.int64),
                                np.broadcast_to(t, (num_checks - 1, num_radii))) - 1
    return table


def check_futility(futility, futility_level, prefix: str = "") -> None:
    """One-line ValueError unless ``futility`` is one of ``FUTILITY_RULES`` and ``futility_level`` a number in
    (0, 1); ``prefix`` (e.g. ``"certify."``) is put before the names in the message."""
    if futility not in FUTILITY_RULES:
        raise ValueError(f"{prefix}futility={futility!r} is not allowed; choose one of: {', '.join(FUTILITY_RULES)}")
    if isinstance(futility_level, bool) or not (isinstance(futility_level, float | int) and 0 < futility_level < 1):
        raise ValueError(f"{prefix}futility_level={futility_level!r} is not allowed; it must be a number in (0, 1)")


@functools.lru_cache(maxsize=32)
def _plan(method, alpha, sigma, radii, batch_size, max_samples, slack, futility, futility_level):
    """Checking times (K,), grid probabilities (G,) and the integer decision tables, all NumPy. ``slack``: the
    bounds are moved outwards by it first (sound noise)."""
    checks = np.minimum(np.arange(1, -(-max_samples // batch_size) + 1) * batch_size, max_samples)
    # p_g rounded up: L >= p_g then implies L >= Phi(r_g / sigma) despite float64 rounding.
    grid_p = np.nextafter(scipy.stats.norm.cdf(np.asarray(radii) / sigma), 1.0)
    if method == "grid":
        s_lower = grid_tests.rejection_table(alpha, checks, np.minimum(grid_p + slack, 1.0), max_samples)
    else:
        s_lower, _ = cs.decision_tables(method, alpha, checks, np.minimum(grid_p + slack, 1.0))
    # The upper side only decides when to stop (never what is certified): the grid tests borrow the betting CS's.
    _, s_upper = cs.decision_tables("betting" if method == "grid" else method, alpha, checks,
                                    np.maximum(grid_p - slack, 0.0))
    # fail_max[k, g]: the most failures after k checks from which radius g can still be certified at a later check
    # (exact), lowered to the most from which it is still plausible (projected futility).
    gain = checks[:, None] - s_lower  # A later check j certifies g iff failures <= t_j - s_lower[j, g].
    later = np.maximum.accumulate(gain[::-1], axis=0)[::-1]
    fail_max = np.concatenate([later, np.full((1, len(radii)), -1, np.int64)], axis=0)
    if futility == "projected":
        fail_max = np.minimum(fail_max, projected_failures_table(checks, s_lower, futility_level))
    tables = dict(checks=checks, s_lower=s_lower, s_upper=s_upper, fail_max=fail_max)
    return {k: v.astype(np.int32) for k, v in tables.items()}, grid_p


def _host_final(successes, trials, settled, *, method, alpha, num_checks, sigma, radii, grid_p, slack):
    s, t, g = (np.asarray(v, np.int64) for v in (successes, trials, settled))
    if method == "grid":  # the grid tests certify grid radii only: p_A > p_g of the largest one settled
        lower = np.zeros(s.shape)
    else:
        lower, _ = cs.bounds(method, s, np.maximum(t, 1), alpha, num_checks)
        lower = np.where(t > 0, lower - slack, 0.0)
    grid_r, grid_p = np.concatenate([[-np.inf], radii]), np.concatenate([[0.0], grid_p])
    p64 = np.maximum(lower, grid_p[g])
    abstain = ~(p64 >= 0.5)
    radius64 = np.maximum(sigma * scipy.stats.norm.ppf(np.where(abstain, 0.5, lower)), grid_r[g])
    radius = np.where(abstain, np.float32(0), H.round_down_f32(np.maximum(radius64, 0.0)))
    return H.round_down_f32(p64), radius.astype(np.float32), abstain


def _sequential_one(key, x, *, apply_fn, variables, sigma, n0, batch_size, num_classes, tables, sound):
    key_sel, key_est = jax.random.split(key)
    counts0 = counts_one(key_sel, x, apply_fn, variables, sigma, n0, batch_size, num_classes, sound)
    guess = jnp.argmax(counts0).astype(jnp.int32)
    checks, s_lower, s_upper, fail_max = (jnp.asarray(tables[k]) for k in ("checks", "s_lower", "s_upper",
                                                                         "fail_max"))
    num_checks, num_radii = s_lower.shape
    max_samples = int(tables["checks"][-1])

    def cond(state):
        k, _, settled, ceiling = state
        return (k < num_checks) & (settled < ceiling)

    def body(state):
        k, hits, settled, ceiling = state
        counts = chunk_counts(key_est, k, x, apply_fn, variables, sigma, batch_size, max_samples, num_classes,
                                 sound)
        hits = hits + counts[guess]
        failures = checks[k] - hits
        settled = jnp.maximum(settled, jnp.sum(hits >= s_lower[k], dtype=jnp.int32))
        ruled_out = jnp.sum(hits <= s_upper[k], dtype=jnp.int32)  # U_t < p_g holds for the top ``ruled_out`` radii.
        reachable = jnp.sum(failures <= fail_max[k + 1], dtype=jnp.int32)  # not given up by the futility rule
        ceiling = jnp.minimum(ceiling, jnp.minimum(num_radii - ruled_out, reachable))
        return k + 1, hits, settled, ceiling

    ceiling0 = jnp.sum(fail_max[0] >= 0, dtype=jnp.int32)
    zero = jnp.int32(0)
    k, hits, settled, _ = jax.lax.while_loop(cond, body, (zero, zero, zero, ceiling0))
    trials = jnp.where(k > 0, checks[jnp.maximum(k - 1, 0)], 0)
    return guess, hits, trials, settled


def certify_sequential(key, apply_fn: Callable, variables, x, *, sigma: float, radii, alpha: float = 0.001,
                       n0: int = 100, max_samples: int = 100_000, batch_size: int = 1000, num_classes: int,
                       method: str = "betting", sound: bool = False, futility: str = "projected",
                       futility_level: float = FUTILITY_LEVEL) -> SequentialCertificate:
    """Sequential CERTIFY with an anytime-valid confidence sequence: stops as soon as the radius grid is settled.

    Args:
      key: PRNG key; one for one image, one or B for a batch (as ``cohen.certify``). Each image's key is
        split into a selection key (``n0`` draws) and an estimation key whose draw stream is the one ``certify``
        uses for ``n`` (the first t draws here are ``certify``'s first t when ``batch_size <= n``).
      apply_fn: ``apply_fn(variables, images (m, H, W, C)) -> logits (m, num_classes)``; static.
      variables: model variables.
      x: one image (H, W, C) or a batch (B, H, W, C), float pixel units in [0, 1].
      sigma: noise standard deviation in pixel units (> 0); static.
      radii: the grid ``r_1 < ... < r_G`` (pixel units, >= 0) whose certification decides when to stop; static.
      alpha: Python float in (0, 1); static.
      n0: selection draws; static.
      max_samples: most estimation draws per image; static.
      batch_size: estimation draws per step (the confidence sequence is looked at after each); static.
      num_classes: K; static.
      method: ``"betting"`` (KT betting CS, valid at every t), ``"union"`` (Clopper-Pearson at level
        ``alpha / K`` at each of the K = ceil(max_samples / batch_size) checking times) or ``"grid"`` (one
        likelihood-ratio mixture test per grid threshold, ``grid_tests``: certifies grid radii only, and
        ``p_a_lower`` is the threshold ``Phi(r / sigma)`` of the radius certified); static.
      sound: static; sample ``sound_noise`` grid noise (x on the 1/255 grid): the guarantee then holds in
        floating point for the smoothed ``f(fl32(Q(z)))``, with every bound moved outwards by
        ``sound_noise.certification_slack(sigma, H * W * C)`` (about 1e-8).
      futility: static; when to give up on the next grid radius (see the module docstring). ``"projected"``
        (default): when it would not be certified by ``max_samples`` even if the misses continued at the lowest
        rate the data leave plausible (Clopper-Pearson at ``futility_level``); ``"exact"``: only when the upper
        bound rules it out or it is unreachable even if every remaining draw hits. Either way the guarantee below
        holds: it only needs the confidence sequence (or the grid tests), valid at any stopping time.
      futility_level: static; delta in (0, 1) of ``"projected"`` (smaller = more optimistic = more draws).

    Returns:
      ``SequentialCertificate`` of scalars (one image) or (B,) arrays. The radius is the larger of the largest grid
      radius certified at some check and ``sigma * Phi^-1(L_tau)`` at the stopping time tau (``"grid"``: the grid
      radius alone), rounded down; abstain (prediction -1, radius 0) iff that bound is < 1/2. Guarantee, per input x: P[the certificate is wrong] <=
      alpha, where wrong means prediction != -1 and some x' with ||x' - x||_2 < radius has g(x') != prediction (so
      in particular P[radius > the true robust radius of g at x, with prediction = g(x)] <= alpha), the
      probability being over the noise of this call, whatever the stopping time. Rows of a batch depend only on
      their own image and key (so results do not depend on batching or sharding); under ``vmap`` all images
      run until the last one stops, but each reports and is charged only its own draws.
    """
    sigma, alpha = check_positive_sigma(sigma), check_alpha(alpha)
    n0, max_samples = check_int("n0", n0, 1), check_int("max_samples", max_samples, 1)
    batch_size, num_classes = check_int("batch_size", batch_size, 1), check_int("num_classes", num_classes, 2)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of: {', '.join(METHODS)}")
    radii = check_radii(radii)
    batch_size = min(batch_size, max_samples)
    x = jnp.asarray(x)
    keys = as_keys(key, x)
    slack = 0.0
    if sound:
        sound_noise.check_on_grid(x)
        slack = sound_noise.certification_slack(sigma, x[0].size if x.ndim == 4 else x.size)
    check_futility(futility, futility_level)
    tables, grid_p = _plan(method, alpha, sigma, radii, batch_size, max_samples, slack, futility,
                           float(futility_level))
    one = functools.partial(_sequential_one, apply_fn=apply_fn, variables=variables, sigma=sigma, n0=n0,
                            batch_size=batch_size, num_classes=num_classes, tables=tables, sound=bool(sound))
    guess, hits, trials, settled = one(keys, x) if x.ndim == 3 else jax.vmap(one)(keys, x)
    final = functools.partial(_host_final, method=method, alpha=alpha, num_checks=len(tables["checks"]),
                              sigma=sigma, radii=np.asarray(radii), grid_p=grid_p, slack=slack)
    p_lower, radius, abstain = H.callback(final, (jnp.float32, jnp.float32, jnp.bool_), hits, trials, settled)
    prediction = jnp.where(abstain, jnp.int32(-1), guess)
    return SequentialCertificate(prediction, radius, p_lower, hits, guess, trials + n0)
