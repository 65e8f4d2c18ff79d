"""Child process for the multi-device SmoothAdv test (not collected by pytest).

  python _smoothadv_worker.py OUT.npz     # attacks and two SmoothAdv train steps of a BatchNorm ResNet, sharded
"""

import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from smoothjax import parallel, smoothadv, training
from smoothjax.models import CifarResNet, make_apply_fn


def run(out_path: str, batch: int = 8, m: int = 2) -> None:
    model = CifarResNet(depth=8, num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    apply_fn = make_apply_fn(model)
    mesh = parallel.make_mesh()
    repl, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    noise_rows = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    noise = (0.25 * rng.standard_normal((m, batch, 8, 8, 3))).astype(np.float32)
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=4)
    state = jax.jit(lambda k: training.create_train_state(model, tx, k, (8, 8, 3)), out_shardings=repl)(
        jax.random.key(0))
    args = (state.variables, jax.device_put(x, rows), jax.device_put(y, rows), jax.device_put(noise, noise_rows),
            jax.random.key(3))
    shard_in = (repl, rows, rows, noise_rows, repl)
    results = {}
    for name, fn in [
        ("pgd", lambda v, a, b, n, k: smoothadv.smooth_pgd_l2(apply_fn, v, a, b, n, epsilon=0.5, num_steps=2, key=k)),
        ("no_grad", lambda v, a, b, n, k: smoothadv.smooth_pgd_l2(apply_fn, v, a, b, n, epsilon=0.5, num_steps=2,
                                                                no_grad=True, key=k)),
        ("ddn", lambda v, a, b, n, k: smoothadv.smooth_ddn(apply_fn, v, a, b, n, epsilon=0.5, num_steps=2,
                                                         init_norm=0.5, key=k)),
    ]:
        results[name] = np.asarray(jax.jit(fn, in_shardings=shard_in, out_shardings=rows)(*args))

    loss = smoothadv.smoothadv_loss(model, sigma=0.25, attack="pgd", epsilon=0.5, num_steps=1, num_noise_vec=m,
                                    train_multi_noise=True, warmup=2)
    base = training.make_train_step(loss, tx)

    def with_epoch(st, data, key):  # As the train job does: the epoch joins the batch inside the jitted step.
        return base(st, {**data, "epoch": st.step}, key)

    step = jax.jit(with_epoch, in_shardings=(repl, rows, repl), out_shardings=(repl, repl))
    for s in range(2):
        data = {"image": jax.device_put(x, rows), "label": jax.device_put(y, rows)}
        state, metrics = step(state, data, jax.random.key(1))
        results[f"loss_{s}"] = np.asarray(metrics["loss"])
    for path, v in jax.tree_util.tree_leaves_with_path(state.variables):
        results["state" + jax.tree_util.keystr(path)] = np.asarray(v)
    np.savez(out_path, devices=len(jax.devices()), **results)


if __name__ == "__main__":
    run(sys.argv[1])
