"""SmoothAdv throughput: ``smooth_pgd_l2`` on the soft smoothed classifier and the SmoothAdv train step.

    python benchmarks/attack_throughput.py                                    # ResNet-110, batch 32, T = 10
    python benchmarks/attack_throughput.py --model=cifar_resnet20 --noise=1,4 --steps=3 --rounds=2

On random 32x32x3 images (CIFAR ResNet, random weights, 10 classes, sigma 0.25): the attack with m in ``--noise``
draws and T = ``--steps`` (image-steps per second = batch x T / wall time), and one SmoothAdv train step (PGD on
m = 4 draws, T = 1 and ``--steps``, cross-entropy on all m noisy copies; images per second). Compilation excluded.
The PyTorch reference algorithm on the same machine: docs/performance.md (``benchmarks/cpu_vs_torch.py``).
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import timing
from smoothjax import noise, smoothadv, training

_MODEL = flags.DEFINE_string("model", "cifar_resnet110", "a smoothjax.models name")
_BATCH = flags.DEFINE_integer("batch", 32, "images per call")
_NOISE = flags.DEFINE_list("noise", ["1", "4", "8"], "m, noise draws per image")
_STEPS = flags.DEFINE_integer("steps", 10, "attack steps T")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "timed calls per setting")
_OUT = flags.DEFINE_string("out", str(timing.HERE / "results" / "attack_throughput.json"), "JSON results")


def main(argv):
    del argv
    model, variables, apply_fn = timing.random_model(_MODEL.value)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((_BATCH.value, 32, 32, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, _BATCH.value).astype(np.int32))
    runners, work = {}, {}
    attack = jax.jit(lambda v, n, k: smoothadv.smooth_pgd_l2(apply_fn, v, x, y, n, epsilon=0.5,
                                                             num_steps=_STEPS.value, key=k))
    for m in map(int, _NOISE.value):
        eta = noise.gaussian_noise(jax.random.key(m), (m, *x.shape), 0.25)
        runners[f"smooth_pgd_l2_m_{m}"] = lambda eta=eta: jax.block_until_ready(attack(variables, eta,
                                                                                       jax.random.key(3)))
        work[f"smooth_pgd_l2_m_{m}"] = _BATCH.value * _STEPS.value
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=100, lr_schedule="constant")
    batch = {"image": x, "label": y}
    for steps in sorted({1, _STEPS.value}):
        loss = smoothadv.smoothadv_loss(model, sigma=0.25, attack="pgd", epsilon=0.5, num_steps=steps,
                                        num_noise_vec=4, train_multi_noise=True)
        step = jax.jit(training.make_train_step(loss, tx), donate_argnums=0)
        holder = [jax.jit(lambda k: training.create_train_state(model, tx, k, (32, 32, 3)))(jax.random.key(0))]

        def run(step=step, holder=holder):
            holder[0], metrics = step(holder[0], batch, jax.random.key(1))
            jax.block_until_ready((holder[0], metrics))
        runners[f"smoothadv_train_step_T_{steps}"], work[f"smoothadv_train_step_T_{steps}"] = run, _BATCH.value
    times = timing.time_calls(runners, rounds=_ROUNDS.value)
    rows = {name: timing.summary(times[name], work[name], "per_s") for name in runners}
    for name, row in rows.items():
        unit = "image-steps/s" if name.startswith("smooth_pgd") else "img/s"
        print(f"{name:<28} {row['per_s']:9.2f} {unit} ({row['min']:.2f}-{row['max']:.2f}), cpu {row['cpu_share']}")
    timing.write_results({"benchmark": "attack_throughput", "model": _MODEL.value, "batch": _BATCH.value,
                          "steps": _STEPS.value, "machine": timing.machine_info(), "rows": rows}, _OUT.value)


if __name__ == "__main__":
    app.run(main)
