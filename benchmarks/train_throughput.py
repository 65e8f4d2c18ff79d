"""Training throughput: images per second of the Gaussian-augmentation train step, jitted over the data mesh.

    python benchmarks/train_throughput.py                          # ResNet-110 and -20, batch 64 and 256
    python benchmarks/train_throughput.py --models=cifar_resnet20 --batch_sizes=64 --rounds=3
    python benchmarks/train_throughput.py --models=cifar_resnet20 --loss=macer --batch_sizes=64   # 64 x 16 rows

The step is the library's (``training.make_train_step`` with ``gaussian_augmentation_loss``, sigma 0.25, SGD
momentum 0.9, weight decay 1e-4; ``--loss`` picks another loss of ``smoothjax.jobs.train.LOSSES`` with its default
options from smoothjax/jobs/defaults.py, e.g. ``macer``: 16 noisy rows per image, img/s counts images, not rows), jitted
over a 1-D ``data`` mesh of every device with the state donated, exactly as ``smoothjax.jobs.train`` runs it, on
random 32x32x3 images; compilation and a warm-up step are excluded. PyTorch's step on the same machine, and what
limits XLA:CPU here: docs/performance.md (``benchmarks/cpu_vs_torch.py``).
"""

import jax
import numpy as np
from absl import app, flags

import timing
from configs.common import base_config
from smoothjax import parallel, training
from smoothjax.jobs.train import LOSSES
from smoothjax.models import count_params, get_model

_MODELS = flags.DEFINE_list("models", ["cifar_resnet110", "cifar_resnet20"], "smoothjax.models names")
_BATCHES = flags.DEFINE_list("batch_sizes", ["64", "256"], "global batch sizes")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "timed steps per setting")
_LOSS = flags.DEFINE_enum("loss", "gaussian", sorted(LOSSES), "the training loss (config.loss)")
_OUT = flags.DEFINE_string("out", "", "JSON results (default: results/train_throughput[_<loss>].json)")


def make_step(model, batch_size: int):
    """``run()``: one train step on a fixed random batch (state carried over calls), blocking on the new state."""
    mesh = parallel.make_mesh()
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=100, lr_schedule="constant")
    repl, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state = jax.jit(lambda k: training.create_train_state(model, tx, k, (32, 32, 3)), out_shardings=repl)(
        jax.random.key(0))
    config = base_config()
    config.sigma = 0.25
    step = jax.jit(training.make_train_step(LOSSES[_LOSS.value](model, config), tx),
                   in_shardings=(repl, rows, repl), out_shardings=(repl, repl), donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = jax.device_put({"image": rng.random((batch_size, 32, 32, 3), dtype=np.float32),
                            "label": rng.integers(0, 10, batch_size).astype(np.int32)}, rows)
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch, jax.random.key(1))
        jax.block_until_ready((holder[0], metrics))
    return run, count_params(state.variables)


def main(argv):
    del argv
    rows = {}
    for name in _MODELS.value:
        model = get_model(name, 10, dataset="cifar10")
        for batch in map(int, _BATCHES.value):
            run, params = make_step(model, batch)
            times = timing.time_calls({"step": run}, rounds=_ROUNDS.value)
            rows[f"{name}_batch_{batch}"] = {**timing.summary(times["step"], batch, "images_per_s"),
                                             "parameters": params}
            row = rows[f"{name}_batch_{batch}"]
            print(f"{name} batch {batch}: {row['images_per_s']:.1f} img/s ({row['min']:.1f}-{row['max']:.1f}), "
                  f"cpu share {row['cpu_share']}")
    suffix = "" if _LOSS.value == "gaussian" else f"_{_LOSS.value}"
    out = _OUT.value or timing.HERE / "results" / f"train_throughput{suffix}.json"
    timing.write_results({"benchmark": "train_throughput", "loss": _LOSS.value, "machine": timing.machine_info(),
                          "rows": rows}, out)


if __name__ == "__main__":
    app.run(main)
