"""Child process for test_meshes: certification on a batch sharded over ``jax.make_mesh((4,), ("batch",))``.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4. argv[1] is the axis type (explicit or auto). Prints
one JSON line: each result's values and whether it stayed sharded over the 4 devices along the batch.
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np

from _certify_devices_worker import COMMON, apply_fn, problem


def attack_problem(images):
    """(SmoothAdv PGD with everything but its arrays bound, labels (8,), noise (2, 8, 4, 4, 1)) for ``images``."""
    import jax

    from smoothjax import smoothadv
    attack = functools.partial(smoothadv.smooth_pgd_l2, apply_fn, epsilon=0.5, num_steps=3, key=jax.random.key(7))
    noise = 0.25 * np.random.default_rng(0).normal(size=(2, *images.shape)).astype(np.float32)
    return attack, np.arange(len(images)) % 3, noise


def main():
    import jax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    import smoothjax
    from smoothjax import certification as C

    assert jax.device_count() == 4, jax.devices()
    kind = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[sys.argv[1]]
    mesh = jax.make_mesh((4,), ("batch",), axis_types=(kind,))
    weights, images, seed = problem()
    key = jax.random.key(seed)
    out = {}
    with jax.set_mesh(mesh):
        x = jax.device_put(images, NamedSharding(mesh, P("batch")))
        w = jax.device_put(weights, NamedSharding(mesh, P()))
        certify = functools.partial(C.certify, apply_fn=apply_fn, n0=30, n=500, alpha=0.01, **COMMON)
        counts = functools.partial(C.sample_counts, apply_fn=apply_fn, num=500, **COMMON)
        predict = functools.partial(C.predict, apply_fn=apply_fn, n=500, alpha=0.01, **COMMON)
        g = smoothjax.SmoothedClassifier(apply_fn, w, COMMON["sigma"])
        results = {
            "counts": counts(key, variables=w, x=x), "certify": certify(key, variables=w, x=x),
            "predict": predict(key, variables=w, x=x),
            "classifier": g.certify(key, x, n0=30, n=500, alpha=0.01, batch_size=COMMON["batch_size"])}
        # Inside a jit of one's own only the Explicit type carries the sharding; under Auto the axis is named.
        named = {} if kind == AxisType.Explicit else {"batch_axis": "batch"}
        results["certify_jit"] = jax.jit(functools.partial(certify, **named))(key, variables=w, x=x)
        results["counts_jit"] = jax.jit(functools.partial(counts, **named))(key, variables=w, x=x)
        results["classifier_jit"] = jax.jit(lambda k, xs: g.certify(k, xs, n0=30, n=500, alpha=0.01,
                                                                    batch_size=COMMON["batch_size"], **named))(key, x)
        attack, labels, noise = attack_problem(images)
        y = jax.device_put(labels, NamedSharding(mesh, P("batch")))
        eta = jax.device_put(noise, NamedSharding(mesh, P(None, "batch")))
        results["attack"] = attack(w, x, y, eta)
        results["attack_jit"] = jax.jit(attack)(w, x, y, eta)
        # A one-line error naming the value: an axis the mesh lacks, a batch the axis does not divide.
        for bad in ({"batch_axis": "rows"}, {"batch_axis": "batch", "x": np.asarray(images)[:6]}):
            try:
                certify(key, variables=w, **{"x": x, **bad})
            except ValueError as e:
                assert "batch_axis=" in str(e) and "\n" not in str(e), e
            else:
                raise AssertionError(f"no error for {bad.keys()}")
    for name, value in results.items():
        leaves = jax.tree.leaves(value)
        out[name] = {"values": [np.asarray(v).tolist() for v in leaves],
                     "sharded": all(v.sharding.spec[0] == "batch" and len(v.sharding.device_set) == 4
                                    for v in leaves)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
