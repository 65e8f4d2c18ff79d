"""Every configs/*.py loads by path from any directory, locked; config.dtype reaches the model."""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from smoothjax import models

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py") if p.name not in ("__init__.py", "common.py"))

_LOAD = """
import sys
from absl import flags
from ml_collections import config_flags
holder = config_flags.DEFINE_config_file("config", None, "config", lock_config=True)
flags.FLAGS(["prog", "--config=" + sys.argv[1]])
c = holder.value
assert "configs" not in sys.modules, "loaded through the repository's configs package"
try:
    c.sigmaa = 0.5
except AttributeError as e:
    refused = "sigmaa" in str(e)
else:
    refused = False
print(c.seed, c.dtype, refused, c.is_locked)
"""


def test_every_config_loads_by_path_from_another_directory_and_refuses_a_new_field(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    for name in CONFIGS:  # one process per config: nothing cached between them
        proc = subprocess.run([sys.executable, "-c", _LOAD, str(ROOT / "configs" / name)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert proc.stdout.split() == ["0", "float32", "True", "True"], (name, proc.stdout)


def test_get_config_is_locked_and_existing_fields_still_change():
    sys.path.insert(0, str(ROOT))
    try:
        from configs import cifar10_cpu, digits, siam_cifar100
    finally:
        sys.path.remove(str(ROOT))
    for c in (digits.get_config(), cifar10_cpu.get_config("sigma=0.5"), siam_cifar100.get_config()):
        assert c.is_locked
        with pytest.raises(AttributeError, match="sigmaa"):
            c.sigmaa = 0.5
        c.sigma = 0.5
        c.certify.n = 7
    assert cifar10_cpu.get_config("sigma=0.5").model == "cifar_resnet20"


def test_dtype_names():
    assert models.compute_dtype("bfloat16") == jnp.bfloat16 and models.compute_dtype(jnp.float32) == jnp.float32
    with pytest.raises(ValueError, match="dtype='int8' is not allowed; choose one of: float32, bfloat16, float16"):
        models.compute_dtype("int8")
    model = models.get_model("small_cnn", 10, dtype="bfloat16")
    assert model.dtype == jnp.bfloat16
    assert models.with_compute_dtype(models.get_model("small_cnn", 10), "bfloat16").dtype == jnp.bfloat16
