"""What random-number generation costs SIAM on CPU: smoothed inference and the PGD-7 / EPGD-7 train step.

Run from the repository root, wrapped in ``flock /tmp/bench.lock`` (the train-step configs compile for minutes the first
time; ``--cache-dir`` as in ``siam_throughput.py`` makes reruns load them)::

    flock /tmp/bench.lock python benchmarks/siam_rng_cost.py
    flock /tmp/bench.lock python benchmarks/siam_rng_cost.py --infer 1:64 64:8 --train   # inference only

Model and workloads are those of ``benchmarks/siam_throughput.py`` (CPNI ResNet-20 of ``configs/siam_cifar10.py``,
random CIFAR-sized images, ``smoothed_predict`` mode vote with passes one at a time, the SIAM train step). Every
Gaussian draw of the model is a ``jax.random.normal`` call; the same jitted function is compiled three times with
that function swapped at trace time, and the three are timed interleaved round by round
(``timing.time_interleaved``):

* ``jax_normal``: ``jax.random.normal`` (what the library uses);
* ``fast``: ``unrolled_threefry.standard_normal`` (an experiment, not in the library: the same values with the
  Threefry rounds unrolled);
* ``rng_free``: a stand-in costing ~1 op per number (``iota * 2^-24`` plus a key-derived offset: not constant, so XLA
  can neither fold nor hoist it; every multiply, add and low-rank product on the noise is still computed).

``rng_share`` = 1 - t(rng_free) / t(variant): the share of a call spent generating normal numbers. ``normals_per_call``
counts the numbers drawn (per pass: input noise of the batch + one weight draw per layer; an attack step draws on its
forward passes only, the train step adds a clean and an adversarial training pass). ``same_predictions`` checks that
``jax_normal`` and ``fast`` give identical smoothed predictions from the same key. Output:
``benchmarks/results/siam_rng_cost.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from siam_throughput import (PGD_STEPS, compiled, jax_model, jax_train_runner, random_batch,  # noqa: E402
                             use_compilation_cache)
from timing import QUIET, cpu_share, load_average, time_interleaved, warn_if_busy, write_results  # noqa: E402
from train_throughput import machine_info  # noqa: E402

from unrolled_threefry import JAX_NORMAL, standard_normal  # noqa: E402

from smoothjax.models import make_stochastic_apply_fn  # noqa: E402
from smoothjax.smoothing import smoothed_predict  # noqa: E402

VARIANTS = ("jax_normal", "fast", "rng_free")


def _rng_free(key, shape, dtype=jnp.float32):
    """Stand-in for a normal draw at ~1 op per number: a ramp plus a key-dependent offset (neither folded nor hoisted)."""
    shape = tuple(shape)
    offset = (jax.random.key_data(key)[..., 0] >> jnp.uint32(8)).astype(dtype) * np.float32(2.0**-24)
    return (jax.lax.iota(dtype, math.prod(shape)) * np.float32(2.0**-24) + offset).reshape(shape)


def _jax_normal(key, shape, dtype=jnp.float32):
    return JAX_NORMAL(key, tuple(shape), dtype)


@contextlib.contextmanager
def drawing_with(variant: str, record: list | None = None):
    """Within the block, traced models draw their normal numbers with ``variant`` (sizes appended to ``record``)."""
    base = {"jax_normal": _jax_normal, "fast": standard_normal, "rng_free": _rng_free}[variant]

    def draw(key, shape, dtype=jnp.float32):
        if record is not None:
            record.append(math.prod(shape))
        return base(key, shape, dtype)

    jax.random.normal = draw  # the noise layers call jax.random.normal while being traced
    try:
        yield
    finally:
        jax.random.normal = JAX_NORMAL


def normals_per_pass(batch: int) -> int:
    """Normal numbers one stochastic pass of the model draws on ``batch`` images (counted while tracing)."""
    model, variables = jax_model()
    apply_fn = make_stochastic_apply_fn(model)
    sizes = []
    with drawing_with("jax_normal", sizes):
        jax.eval_shape(apply_fn, variables, jnp.zeros((batch, 32, 32, 3)), jax.random.key(0))
    return sum(sizes)


def infer_runner(batch: int, m: int, variant: str):
    """(run, predict, compile_s): ``run()`` times one smoothed prediction, ``predict(key)`` returns one."""
    model, variables = jax_model()
    apply_fn = make_stochastic_apply_fn(model)
    x = jnp.asarray(random_batch(batch)[0])
    with drawing_with(variant):
        f, compile_s = compiled(lambda v, xx, k: smoothed_predict(k, apply_fn, v, xx, num_samples=m, mode="vote",
                                                                  chunk_size=1), variables, x, jax.random.key(1))
    keys = iter(range(10**6))
    return (lambda: jax.block_until_ready(f(variables, x, jax.random.key(next(keys))))), \
        (lambda key: np.asarray(f(variables, x, key))), compile_s


def measure(kind: str, batch: int, m: int, args) -> dict:
    print(f"\n{kind}: batch {batch}, m={m}", flush=True)
    per_pass = normals_per_pass(batch)
    passes = m if kind == "inference" else PGD_STEPS * m + 2
    record = {"kind": kind, "batch": batch, "m": m, "normals_per_pass": per_pass, "passes_per_call": passes,
              "normals_per_call": per_pass * passes, "compile_s": {}}
    runners, predict = {}, {}
    for variant in args.variants:
        if kind == "inference":
            runners[variant], predict[variant], record["compile_s"][variant] = infer_runner(batch, m, variant)
        else:
            t0 = time.perf_counter()
            with drawing_with(variant):
                runners[variant], _ = jax_train_runner(batch, m)
            record["compile_s"][variant] = round(time.perf_counter() - t0, 1)
        print(f"  {variant}: compiled in {record['compile_s'][variant]} s", flush=True)
    if {"jax_normal", "fast"} <= set(predict):
        keys = [jax.random.key(s) for s in (11, 12, 13)]
        record["same_predictions"] = all(np.array_equal(predict["jax_normal"](k), predict["fast"](k)) for k in keys)
    record["load_average_before"] = load_average()
    times = time_interleaved(runners, rounds=args.steps, warmup=args.warmup, idle_wait=args.idle_wait)
    record["load_average_after"] = load_average()
    for variant, t in times.items():
        quiet = [w for w, o in zip(t["wall"], t["other"]) if o is not None and o < QUIET]
        record[variant] = {"call_s": round(statistics.median(t["wall"]), 4), "call_s_quiet":
                           round(statistics.median(quiet), 4) if quiet else None, "img_per_s":
                           round(batch / statistics.median(t["wall"]), 3), "cpu_share": cpu_share(t),
                           "other_load": t["other"], "all_call_s": [round(w, 4) for w in t["wall"]]}
    if "rng_free" in times:  # paired per round: the rounds share whatever load the machine had
        free = times["rng_free"]["wall"]
        for variant in set(times) - {"rng_free"}:
            shares = [1 - f / w for f, w in zip(free, times[variant]["wall"])]
            extra = statistics.median(w - f for f, w in zip(free, times[variant]["wall"]))
            record[variant].update(rng_share=round(statistics.median(shares), 3),
                                   rng_ns_per_normal=round(extra / record["normals_per_call"] * 1e9, 2))
    if {"jax_normal", "fast"} <= set(times):
        record["fast_speedup"] = round(statistics.median(
            j / f for j, f in zip(times["jax_normal"]["wall"], times["fast"]["wall"])), 3)
    line = "  " + ", ".join(f"{v} {record[v]['call_s'] * 1e3:.1f} ms" + (
        f" (rng {100 * record[v]['rng_share']:.0f} %, {record[v]['rng_ns_per_normal']} ns/normal)"
        if "rng_share" in record[v] else "") for v in times)
    print(line + (f"; fast/jax_normal speedup {record['fast_speedup']}" if "fast_speedup" in record else ""),
          flush=True)
    return record


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--infer", nargs="*", default=["1:64", "64:8"], help="inference configs m_test:batch")
    p.add_argument("--train", nargs="*", type=int, default=[1, 8], help="m_train values of the train step")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=5, help="timed rounds per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--idle-wait", type=float, default=5.0)
    p.add_argument("--cache-dir", default=str(HERE.parent / ".cache" / "jax"))
    p.add_argument("--out", default=str(HERE / "results" / "siam_rng_cost.json"))
    a = p.parse_args(argv)
    try:
        a.infer = [tuple(int(v) for v in s.split(":")) for s in a.infer]
    except ValueError:
        p.error(f"--infer {a.infer} must be m_test:batch pairs such as 64:8")
    if any(len(c) != 2 or min(c) < 1 for c in a.infer) or min(a.train + [a.train_batch, a.steps, 1]) < 1:
        p.error(f"--infer {a.infer}, --train {a.train}, sizes and steps must be positive")
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    use_compilation_cache(args.cache_dir)
    info = machine_info(None)
    print(f"{info['cpu_model']}, {info['cores']} cores; jax {info['jax']}")
    warn_if_busy(info)
    t0 = time.perf_counter()
    records = [measure("inference", b, m, args) for m, b in args.infer]
    records += [measure("train_step", args.train_batch, m, args) for m in args.train]
    print(f"\n{'what':<11}{'m':>4}{'batch':>6}{'normals':>11}" + "".join(f"{v + ' ms':>15}" for v in args.variants)
          + f"{'rng share':>11}{'after':>7}{'speedup':>9}")
    for r in records:
        what = r["kind"] if r["kind"] == "inference" else ("PGD-7" if r["m"] == 1 else "EPGD-7")
        share = lambda v: f"{100 * r[v]['rng_share']:.0f}%" if "rng_share" in r.get(v, {}) else "-"  # noqa: E731
        print(f"{what:<11}{r['m']:>4}{r['batch']:>6}{r['normals_per_call']:>11}"
              + "".join(f"{r[v]['call_s'] * 1e3:>15.1f}" for v in args.variants)
              + f"{share('jax_normal'):>11}{share('fast'):>7}{r.get('fast_speedup', '-'):>9}")
    result = {"benchmark": "siam_rng_cost",
              "what": ("seconds per call of SIAM smoothed inference / train step on a CPNI ResNet-20 with the model's "
                       "normal draws made by jax.random.normal, by unrolled_threefry.standard_normal, or by a ~free "
                       "stand-in; rng_share = 1 - t(rng_free)/t(variant), median over interleaved rounds"),
              "machine": info, "settings": {**vars(args), "quiet_threshold": QUIET}, "configs": records,
              "total_s": round(time.perf_counter() - t0, 1)}
    write_results(result, args.out)
    return result


if __name__ == "__main__":
    main()
