"""Child process for the 1 == 4 devices test of Consistency and MACER (not collected by pytest).

  python _certified_training_worker.py consistency|macer OUT.npz    # one train step of a BatchNorm ResNet
"""

import sys

import jax
import numpy as np

from smoothjax import certified_training, data, parallel, training
from smoothjax.models import CifarResNet


def run(loss: str, out_path: str, batch: int = 16) -> None:
    rng = np.random.default_rng(0)
    src = data.ArraySource(rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 64), 10)
    model = CifarResNet(depth=8, num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    loss_fn = (certified_training.consistency_loss(model, sigma=0.25, num_noise_vec=2, lbd=10.0, eta=0.5)
               if loss == "consistency" else
               certified_training.macer_loss(model, sigma=0.25, num_noise_vec=4, lbd=12.0, beta=1.0, gamma=8.0))
    mesh = parallel.make_mesh()
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=4)
    repl = parallel.replicated(mesh)
    state = jax.jit(lambda k: training.create_train_state(model, tx, k, (8, 8, 3)), out_shardings=repl)(
        jax.random.key(0))
    step_fn = jax.jit(training.make_train_step(loss_fn, tx), in_shardings=(repl, parallel.batch_sharding(mesh), repl),
                      out_shardings=(repl, repl))
    loader = data.Loader(src, global_batch_size=batch, seed=0, process_index=0, process_count=1)
    batch = loader.local_batch(0)
    if loss == "macer":  # the initial model's own predictions as labels: images in MACER's hinge from the first step
        batch["label"] = np.asarray(jax.numpy.argmax(model.apply(state.variables, batch["image"], train=False), -1),
                                    np.int32)
    state, metrics = step_fn(state, parallel.to_global(batch, mesh), jax.random.key(1))
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state.variables)}
    extra = {"in_hinge": float(metrics["in_hinge"])} if loss == "macer" else {}
    np.savez(out_path, devices=len(jax.devices()), loss=float(metrics["loss"]), **extra, **flat)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
