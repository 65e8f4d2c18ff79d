"""Certification throughput: noisy forward passes per second of ``sample_counts`` and seconds per ``certify`` call.

    python benchmarks/certify_throughput.py                                   # ResNet-110, batch 100, 400, 1000
    python benchmarks/certify_throughput.py --model=cifar_resnet20 --batch_sizes=400 --num=800 --certify_n=2000
    python benchmarks/certify_throughput.py --model=small_cnn --key_impls=threefry,rbg,unsafe_rbg --certify_n=0 \
        --out=benchmarks/results/certify_key_impls.json              # what Threefry's noise costs

For a CIFAR ResNet with random weights (throughput does not depend on them) on one random 32x32x3 image, sigma 0.25:
``certification.sample_counts`` (jitted, compile excluded) drawing ``--num`` noisy copies ``B`` at a time, and one
full ``certification.certify`` (n0 = 100, n = ``--certify_n``, alpha 0.001). The comparison with PyTorch and what
bounds these figures on CPU: docs/performance.md (``benchmarks/cpu_vs_torch.py``). ``--key_impls`` times
``sample_counts`` once per PRNG implementation of ``config.certify.key_impl`` (rows ``..._<impl>``) and the noise
alone (``noise_only_<impl>``: the ``num`` x 32x32x3 normal draws of one call, no model).
"""

import functools

import jax
import numpy as np
from absl import app, flags

import timing
from smoothjax import certification
from smoothjax.jobs.certify import KEY_IMPLS

_MODEL = flags.DEFINE_string("model", "cifar_resnet110", "a smoothjax.models name")
_BATCHES = flags.DEFINE_list("batch_sizes", ["100", "400", "1000"], "noisy copies per forward pass")
_NUM = flags.DEFINE_integer("num", 2000, "noisy copies per sample_counts call")
_CERTIFY_N = flags.DEFINE_integer("certify_n", 10_000, "n of the timed certify call (0 = skip)")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "timed calls per setting")
_KEY_IMPLS = flags.DEFINE_list("key_impls", ["threefry"], f"PRNGs to time: {', '.join(KEY_IMPLS)}")
_OUT = flags.DEFINE_string("out", str(timing.HERE / "results" / "certify_throughput.json"), "JSON results")


def main(argv):
    del argv
    _, variables, apply_fn = timing.random_model(_MODEL.value)
    x = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    runners, work = {}, {}
    for impl in _KEY_IMPLS.value:
        key, suffix = jax.random.key(1, impl=KEY_IMPLS[impl]), "" if impl == "threefry" else f"_{impl}"
        for batch in map(int, _BATCHES.value):
            fn = jax.jit(functools.partial(certification.sample_counts, apply_fn=apply_fn, sigma=0.25,
                                           num=_NUM.value, batch_size=batch, num_classes=10))
            runners[f"sample_counts_batch_{batch}{suffix}"] = lambda fn=fn, key=key: jax.block_until_ready(
                fn(key, variables=variables, x=x))
            work[f"sample_counts_batch_{batch}{suffix}"] = _NUM.value
        if len(_KEY_IMPLS.value) > 1:
            draw = jax.jit(lambda k: jax.random.normal(k, (_NUM.value, *x.shape)))
            runners[f"noise_only_{impl}"] = lambda draw=draw, key=key: jax.block_until_ready(draw(key))
            work[f"noise_only_{impl}"] = _NUM.value
    if _CERTIFY_N.value:
        fn = jax.jit(functools.partial(certification.certify, apply_fn=apply_fn, sigma=0.25, n0=100,
                                       n=_CERTIFY_N.value, alpha=0.001, batch_size=1000, num_classes=10))
        runners["certify"] = lambda: jax.block_until_ready(fn(jax.random.key(2), variables=variables, x=x))
        work["certify"] = 100 + _CERTIFY_N.value
    times = timing.time_calls(runners, rounds=_ROUNDS.value)
    rows = {name: timing.summary(times[name], work[name], "passes_per_s") for name in runners}
    for name, row in rows.items():
        print(f"{name:<28} {row['passes_per_s']:10.1f} passes/s ({row['min']:.1f}-{row['max']:.1f}), "
              f"cpu share {row['cpu_share']}")
    timing.write_results({"benchmark": "certify_throughput", "model": _MODEL.value, "num": _NUM.value,
                          "key_impls": _KEY_IMPLS.value,
                          "machine": timing.machine_info(), "rows": rows}, _OUT.value)


if __name__ == "__main__":
    app.run(main)
