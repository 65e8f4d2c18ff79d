"""Child process for test_sequential's multi-device test: certify_sequential on a batch sharded over 4 devices.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 (set before jax is imported); prints one JSON line.
``problem()`` and ``run()`` are imported by the parent test so that both processes compute the same thing.
"""

from __future__ import annotations

import functools
import json

import numpy as np


def apply_fn(params, images):
    """2 classes from a linear score on flattened (m, 4, 4, 1) images."""
    z = images.reshape(images.shape[0], -1) @ params
    import jax.numpy as jnp

    return jnp.stack([z, -z], axis=-1)


def problem():
    """(weights (16,), images (8, 4, 4, 1) with a spread of margins, key seed) from a fixed NumPy seed."""
    rng = np.random.default_rng(99)
    w = rng.normal(size=16)
    w = (w / np.linalg.norm(w)).astype(np.float32)
    margins = np.linspace(-0.6, 0.8, 8)
    images = (margins[:, None] * w[None, :]).astype(np.float32).reshape(8, 4, 4, 1)
    return w, images, 11


def run(weights, images, seed):
    """Sequential certificates (n0=20, max 2000, batch 100, alpha=0.01, betting), jitted."""
    import jax

    from smoothjax import certification as C

    f = functools.partial(C.certify_sequential, apply_fn=apply_fn, sigma=0.5, radii=(0.0, 0.125, 0.25, 0.5),
                          alpha=0.01, n0=20, max_samples=2000, batch_size=100, num_classes=2)
    return jax.jit(f)(jax.random.key(seed), variables=weights, x=images)


def main():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    weights, images, seed = problem()
    images = jax.device_put(images, NamedSharding(mesh, P("data")))
    weights = jax.device_put(weights, NamedSharding(mesh, P()))
    cert = run(weights, images, seed)
    print(json.dumps({"input_shards": len(images.addressable_shards),
                      "cert": {k: np.asarray(v).tolist() for k, v in cert._asdict().items()}}))


if __name__ == "__main__":
    main()
