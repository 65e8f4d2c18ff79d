"""Child process for test_certification's multi-device test: CERTIFY/PREDICT on a batch sharded over a 1-D mesh.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (set before jax is imported). Prints one JSON line
with the counts and certificates, plus how the outputs are sharded. ``problem()`` is imported by the
parent test so that both processes build the same model, images and key.
"""

from __future__ import annotations

import functools
import json

import numpy as np

NUM_IMAGES, NUM_CLASSES, SIGMA = 8, 3, 0.5
COMMON = dict(sigma=SIGMA, batch_size=48, num_classes=NUM_CLASSES)


def apply_fn(weights, images):
    """A 3-class linear model on flattened (m, 4, 4, 1) images."""
    return images.reshape(images.shape[0], -1) @ weights


def problem():
    """(weights (16, 3), images (8, 4, 4, 1), key seed) from a fixed NumPy seed."""
    rng = np.random.default_rng(1234)
    weights = rng.normal(size=(16, NUM_CLASSES)).astype(np.float32)
    images = rng.uniform(size=(NUM_IMAGES, 4, 4, 1)).astype(np.float32)
    return weights, images, 2024


def run(weights, images, seed):
    """Counts (n=500) and certificates (n0=30, n=500, alpha=0.01), jitted."""
    import jax

    from smoothjax import certification as C

    key = jax.random.key(seed)
    counts = jax.jit(functools.partial(C.sample_counts, apply_fn=apply_fn, num=500, **COMMON))(key, variables=weights,
                                                                                              x=images)
    cert = jax.jit(functools.partial(C.certify, apply_fn=apply_fn, n0=30, n=500, alpha=0.01, **COMMON))(
        key, variables=weights, x=images)
    return counts, cert


def main():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    weights, images, seed = problem()
    images = jax.device_put(images, NamedSharding(mesh, P("data")))
    weights = jax.device_put(weights, NamedSharding(mesh, P()))
    counts, cert = run(weights, images, seed)
    print(json.dumps({
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "input_shards": len(images.addressable_shards),
        "counts_replicated": bool(counts.sharding.is_fully_replicated),
        "counts_devices": len(counts.sharding.device_set),
        "counts": np.asarray(counts).tolist(),
        "cert": {k: np.asarray(v).tolist() for k, v in cert._asdict().items()},
    }))


if __name__ == "__main__":
    main()
