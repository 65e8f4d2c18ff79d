"""SIAM throughput: smoothed inference of the CPNI ResNet-20 and its PGD-7 / EPGD adversarial-training step.

    python benchmarks/siam_throughput.py                                  # m_test 1, 8, 64, 512; PGD and EPGD
    python benchmarks/siam_throughput.py --m_test=1,8 --infer_batch=32 --train=1 --rounds=2

Model: SIAM's CIFAR ResNet-20 as ``configs/siam_cifar10.py`` builds it (CPNI weight noise of rank 5, PNI head, input
noise 0.25 x the reference's std per channel), random weights and 32x32x3 images. Timed: ``siam.smoothed_predict``
(mode vote) with m_test passes, one pass at a time over the batch (``--chunk``, 1: vmapped passes with weight noise
become grouped convolutions that XLA:CPU runs about 5x slower), in images per second; and one training step of
``siam.adversarial_training_loss`` (PGD-7 of eps/4, eps = 8/255, ``m_train`` passes per step: 1 = PGD, 8 = EPGD;
then 0.5 CE(adv) + 0.5 CE(clean), clipping 0.05, SGD Nesterov) in images per second. Compilation excluded; the
unrolled train steps compile for minutes, so ``--cache_dir`` keeps them for reruns. PyTorch: docs/performance.md.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import timing
from configs.siam_cifar10 import siam_config
from smoothjax import siam, training
from smoothjax.models import get_model, make_stochastic_apply_fn

_M_TEST = flags.DEFINE_list("m_test", ["1", "8", "64", "512"], "passes of the smoothed classifier")
_INFER_BATCH = flags.DEFINE_integer("infer_batch", 64, "images per inference call")
_CHUNK = flags.DEFINE_integer("chunk", 1, "passes vmapped together (0 = all)")
_TRAIN = flags.DEFINE_list("train", ["1", "8"], "m_train of the timed train steps ('' = none)")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 32, "images per train step")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "timed calls per setting")
_CACHE = flags.DEFINE_string("cache_dir", "", "persistent compilation cache ('' = none)")
_OUT = flags.DEFINE_string("out", str(timing.HERE / "results" / "siam_throughput.json"), "JSON results")


def main(argv):
    del argv
    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    config = siam_config("cifar10", "noise=cpni")
    model = get_model(config.model, 10, dataset="cifar10", **config.model_kwargs)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    apply_fn, rng, runners, work = make_stochastic_apply_fn(model), np.random.default_rng(0), {}, {}
    x = jnp.asarray(rng.random((_INFER_BATCH.value, 32, 32, 3), dtype=np.float32))
    for m in map(int, _M_TEST.value):
        f = jax.jit(lambda v, k, m=m: siam.smoothed_predict(k, apply_fn, v, x, num_samples=m, mode="vote",
                                                             chunk_size=_CHUNK.value or None))
        runners[f"inference_m_{m}"] = lambda f=f: jax.block_until_ready(f(variables, jax.random.key(1)))
        work[f"inference_m_{m}"] = _INFER_BATCH.value
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=1, nesterov=True, grad_clip_norm=0.05,
                                 lr_schedule="constant")
    batch = {"image": jnp.asarray(rng.random((_TRAIN_BATCH.value, 32, 32, 3), dtype=np.float32)),
             "label": jnp.asarray(rng.integers(0, 10, _TRAIN_BATCH.value).astype(np.int32))}
    for m_train in (int(v) for v in _TRAIN.value if v):
        loss = siam.adversarial_training_loss(model, epsilon=8 / 255, num_steps=7, m_train=m_train)
        step = jax.jit(training.make_train_step(loss, tx), donate_argnums=0)
        holder = [jax.jit(lambda k: training.create_train_state(model, tx, k, (32, 32, 3)))(jax.random.key(0))]

        def run(step=step, holder=holder):
            holder[0], metrics = step(holder[0], batch, jax.random.key(1))
            jax.block_until_ready((holder[0], metrics))
        name = f"train_step_{'pgd' if m_train == 1 else 'epgd'}_m_train_{m_train}"
        runners[name], work[name] = run, _TRAIN_BATCH.value
    times = timing.time_calls(runners, rounds=_ROUNDS.value)
    rows = {name: timing.summary(times[name], work[name], "images_per_s") for name in runners}
    for name, row in rows.items():
        print(f"{name:<30} {row['images_per_s']:9.2f} img/s ({row['min']:.2f}-{row['max']:.2f}), "
              f"cpu share {row['cpu_share']}")
    timing.write_results({"benchmark": "siam_throughput", "machine": timing.machine_info(), "rows": rows}, _OUT.value)


if __name__ == "__main__":
    app.run(main)
