"""Child process for test_train_step_hlo: the compiled train step on 8 host devices, as smoothjax.jobs.train jits it.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8. argv[1] is the compute dtype. Prints one JSON line: the
parameter shapes and, from the optimised HLO text, every all-reduce's operand shapes and the count of each kind of op
that would move data between devices or to the host.
"""

from __future__ import annotations

import json
import re
import sys

_TRANSFERS = ("all-gather", "reduce-scatter", "all-to-all", "collective-permute", "send(", "recv(", "infeed",
              "outfeed", "custom-call", "S(5)")  # S(5): host memory space


def main():
    import jax
    import jax.numpy as jnp

    from smoothjax import parallel, training
    from smoothjax.jobs import train
    from smoothjax.models import get_model

    assert jax.device_count() == 8, jax.devices()
    model = get_model("small_cnn", 10, dtype=sys.argv[1])
    mesh = parallel.make_mesh()
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=10, lr_schedule="constant")
    state = jax.jit(lambda k: training.create_train_state(model, tx, k, (8, 8, 1)),
                    out_shardings=parallel.replicated(mesh))(jax.random.key(0))
    step = train._train_step(training.gaussian_augmentation_loss(model, 0.25), tx, mesh, 10, selftrain=False)
    batch = {"image": jnp.zeros((64, 8, 8, 1)), "label": jnp.zeros((64,), jnp.int32)}
    text = step.lower(state, batch, jax.random.key(1), jnp.float32(1)).compile().as_text()
    reduces = [line for line in text.splitlines() if re.search(r"= .*\ball-reduce(-start)?\(", line)]
    shapes = [re.findall(r"[a-z0-9]+\[[0-9,]*\]", line.split(" all-reduce")[0]) for line in reduces]
    params = [f"{jnp.dtype(p.dtype).name[0]}{p.dtype.itemsize * 8}[{','.join(map(str, p.shape))}]"
              for p in jax.tree.leaves(state.params)]
    print(json.dumps({"all_reduce_shapes": shapes, "params": params,
                      "transfers": {op: text.count(op) for op in _TRANSFERS}}))


if __name__ == "__main__":
    main()
