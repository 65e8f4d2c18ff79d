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
        if kind == AxisType.Explicit:  # under jit only the Explicit type carries the sharding
            results["certify_jit"] = jax.jit(certify)(key, variables=w, x=x)
            results["counts_jit"] = jax.jit(counts)(key, variables=w, x=x)
    for name, value in results.items():
        leaves = jax.tree.leaves(value)
        out[name] = {"values": [np.asarray(v).tolist() for v in leaves],
                     "sharded": all(v.sharding.spec[0] == "batch" and len(v.sharding.device_set) == 4
                                    for v in leaves)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
