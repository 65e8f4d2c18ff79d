"""Certification and SmoothAdv's attack on a batch sharded over jax.make_mesh((4,), ("batch",)), Explicit and Auto
axes, against 1 device."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _certify_devices_worker as worker  # noqa: E402
from _mesh_worker import attack_problem as worker_attack_problem  # noqa: E402
from conftest import subprocess_env  # noqa: E402

from smoothjax import certification as C  # noqa: E402


@pytest.fixture(scope="module")
def unsharded():
    weights, images, seed = worker.problem()
    key = jax.random.key(seed)
    common = dict(apply_fn=worker.apply_fn, variables=weights, x=images, **worker.COMMON)
    cert = C.certify(key, n0=30, n=500, alpha=0.01, **common)
    out = {"counts": [C.sample_counts(key, num=500, **common)], "certify": list(cert),
           "predict": [C.predict(key, n=500, alpha=0.01, **common)], "classifier": list(cert),
           "certify_jit": list(cert), "counts_jit": [C.sample_counts(key, num=500, **common)],
           "classifier_jit": list(cert)}
    attack, labels, noise = worker_attack_problem(images)
    out["attack"] = out["attack_jit"] = [attack(weights, images, labels, noise)]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_four_device_mesh_equals_one_device_and_stays_sharded(kind, unsharded):
    proc = subprocess.run([sys.executable, str(HERE / "_mesh_worker.py"), kind], env=subprocess_env(4), cwd=HERE,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rematerialization" not in proc.stderr.lower(), proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"counts", "certify", "predict", "classifier", "certify_jit", "counts_jit", "classifier_jit", "attack",
            "attack_jit"} <= set(out)
    for name, got in out.items():
        assert got["sharded"], name
        for a, b in zip(got["values"], unsharded[name], strict=True):
            if name.startswith("attack"):  # float gradient steps: XLA may fuse the sharded program differently
                np.testing.assert_allclose(a, np.asarray(b), rtol=0, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(a, np.asarray(b), err_msg=name)
