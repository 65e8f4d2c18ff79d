"""The accelerator path in one command: on whatever backend JAX finds, float32 and bfloat16, it measures

* certification: noisy forward passes per second of ``SmoothedClassifier.sample_counts`` (CIFAR ResNet-110 on
  32x32x3 and ImageNet ResNet-50 on 224x224x3), and the compile time of the program;
* training: images per second of the data-parallel Gaussian-augmentation train step (``train_throughput.make_step``);
* SmoothAdv: image-steps per second of ``smooth_pgd_l2`` (m noise draws per image), and its compile time, with the
  backend's default step loop (unrolled on CPU, a ``lax.fori_loop`` elsewhere) and with the other one (``unroll``).

    python benchmarks/accelerator.py                 # full sizes: for a GPU or TPU
    python benchmarks/accelerator.py --quick         # tiny models and batches: checks the script on a CPU

Writes a Markdown table to stdout and JSON to ``--json`` (default benchmarks/results/accelerator_<backend>.json).
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags

import timing
import train_throughput
from smoothjax import SmoothedClassifier, smoothadv
from smoothjax.models import get_model

_QUICK = flags.DEFINE_bool("quick", False, "tiny models, batches and n (a smoke test on CPU)")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes")
_ROUNDS = train_throughput._ROUNDS  # --rounds: timed calls per setting (shared with train_throughput's flags)
_OUT = flags.DEFINE_string("json", "", "JSON results ('' = benchmarks/results/accelerator_<backend>.json)")


def settings(quick: bool) -> dict:
    """Model names, kwargs, image shapes and work sizes: the paper's shapes, or tiny ones with ``quick``."""
    if quick:  # small enough to finish on a busy 2-core CPU (bfloat16 convolutions are slow on XLA:CPU)
        return {"cifar": ("cifar_resnet8", {}, (16, 16, 3)), "imagenet": ("resnet50", {"stage_sizes": (1, 1, 1, 1),
                "base_width": 4}, (32, 32, 3)), "images": 2, "n": 16, "batch": 8, "train_batch": 4, "steps": 2, "m": 2}
    return {"cifar": ("cifar_resnet110", {}, (32, 32, 3)), "imagenet": ("resnet50", {}, (224, 224, 3)), "images": 8,
            "n": 1000, "batch": 250, "train_batch": 256, "steps": 10, "m": 8}


def compiled(fn, *args):
    """``(compiled fn, compile seconds)`` of ``jax.jit(fn)`` for ``args``."""
    t0 = time.perf_counter()
    out = jax.jit(fn).lower(*args).compile()
    return out, time.perf_counter() - t0


def certification_row(name, kw, shape, dtype, s):
    model = get_model(name, 10, dtype=dtype, **kw)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape)))
    g = SmoothedClassifier(lambda v, x: model.apply(v, x, train=False), variables, 0.25, num_classes=10)
    x = jax.random.uniform(jax.random.key(1), (s["images"], *shape))
    run, seconds = compiled(lambda v, k, xs: g._counts_impl(v, k, xs, n=s["n"], batch_size=s["batch"],
                                                            num_classes=10, where=None),
                            variables, jax.random.split(jax.random.key(2), s["images"]), x)
    keys = jax.random.split(jax.random.key(2), s["images"])
    times = timing.time_calls({"c": lambda: jax.block_until_ready(run(variables, keys, x))}, rounds=_ROUNDS.value)
    return {**timing.summary(times["c"], s["images"] * s["n"], "passes_per_s"), "compile_s": round(seconds, 2)}


def train_row(name, kw, dtype, s):
    run, params = train_throughput.make_step(get_model(name, 10, dtype=dtype, **kw), s["train_batch"])
    times = timing.time_calls({"t": run}, rounds=_ROUNDS.value)
    return {**timing.summary(times["t"], s["train_batch"], "images_per_s"), "parameters": params}


def attack_row(name, kw, shape, dtype, s, unroll=None):
    model = get_model(name, 10, dtype=dtype, **kw)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape)))
    apply_fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    b = s["train_batch"]
    x, y = jax.random.uniform(jax.random.key(1), (b, *shape)), jnp.zeros((b,), jnp.int32)
    eta = 0.25 * jax.random.normal(jax.random.key(2), (s["m"], b, *shape))
    attack = lambda v, xs, e: smoothadv.smooth_pgd_l2(apply_fn, v, xs, y, e, epsilon=0.5,  # noqa: E731
                                                      num_steps=s["steps"], key=jax.random.key(3), unroll=unroll)
    run, seconds = compiled(attack, variables, x, eta)
    times = timing.time_calls({"a": lambda: jax.block_until_ready(run(variables, x, eta))}, rounds=_ROUNDS.value)
    return {**timing.summary(times["a"], b * s["steps"], "image_steps_per_s"), "compile_s": round(seconds, 2)}


def main(argv):
    del argv
    s, rows = settings(_QUICK.value), {}
    for dtype in _DTYPES.value:
        for task, (name, kw, shape) in (("cifar", s["cifar"]), ("imagenet", s["imagenet"])):
            rows[f"certify_{task}_{dtype}"] = certification_row(name, kw, shape, dtype, s)
        rows[f"train_cifar_{dtype}"] = train_row(*s["cifar"][:2], dtype, s)
        rows[f"smoothadv_cifar_{dtype}"] = attack_row(*s["cifar"], dtype, s)  # the default: unrolled on CPU only
        other = jax.default_backend() != "cpu"  # and the other loop (smoothjax.loops), for its compile time
        rows[f"smoothadv_cifar_{dtype}_{'unrolled' if other else 'fori_loop'}"] = attack_row(*s["cifar"], dtype, s,
                                                                                               unroll=other)
    print(f"| {jax.default_backend()} ({jax.device_count()} devices) | rate | min-max | compile s |\n|---|---|---|---|")
    for key, row in rows.items():
        unit = next(k for k in row if k.endswith("_per_s"))
        print(f"| {key} | {row[unit]:.1f} {unit} | {row['min']:.1f}-{row['max']:.1f} | {row.get('compile_s', '')} |")
    out = _OUT.value or str(timing.HERE / "results" / f"accelerator_{jax.default_backend()}.json")
    timing.write_results({"benchmark": "accelerator", "quick": _QUICK.value, "machine": timing.machine_info(),
                          "rows": rows}, out)


if __name__ == "__main__":
    app.run(main)
