"""Child process for multi-device and multi-process training tests (not collected by pytest).

  python _train_worker.py devices OUT.npz            # library-level run of a BatchNorm ResNet on fixed data
"""

import sys

import jax
import numpy as np

from smoothjax import data, parallel, training
from smoothjax.models import CifarResNet


def run_devices(out_path: str, steps: int = 3, batch: int = 16) -> None:
    rng = np.random.default_rng(0)
    src = data.ArraySource(rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 64), 10)
    model = CifarResNet(depth=8, num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    mesh = parallel.make_mesh()
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=4)
    repl = parallel.replicated(mesh)
    state = jax.jit(lambda k: training.create_train_state(model, tx, k, (8, 8, 3)), out_shardings=repl)(
        jax.random.key(0))
    step_fn = jax.jit(training.make_train_step(training.gaussian_augmentation_loss(model, 0.25), tx),
                      in_shardings=(repl, parallel.batch_sharding(mesh), repl), out_shardings=(repl, repl))
    loader = data.Loader(src, global_batch_size=batch, seed=0, process_index=jax.process_index(),
                         process_count=jax.process_count())
    for s in range(steps):
        state, _ = step_fn(state, parallel.to_global(loader.local_batch(s), mesh), jax.random.key(1))
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state.variables)}
    np.savez(out_path, devices=len(jax.devices()), **flat)


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        run_devices(sys.argv[2])
