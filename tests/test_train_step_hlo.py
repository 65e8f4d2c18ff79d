"""The compiled data-parallel train step on 8 host devices: one gradient all-reduce per step, no host transfers."""

import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import subprocess_env  # noqa: E402


def _sizes(shapes):
    return Counter(math.prod(map(int, filter(None, re.search(r"\[(.*)\]", s).group(1).split(",")))) for s in shapes)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_gradient_all_reduce_and_no_host_transfer(dtype):
    proc = subprocess.run([sys.executable, str(HERE / "_train_hlo_worker.py"), dtype], env=subprocess_env(8), cwd=HERE,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["all_reduce_shapes"]) == 1, out["all_reduce_shapes"]  # every gradient in one combined all-reduce
    reduced = out["all_reduce_shapes"][0]
    assert all(s.startswith("f32") for s in reduced)  # gradients are summed in float32, whatever the compute dtype
    params = _sizes(out["params"])
    assert sum(params.values()) == 8 and not params - _sizes(reduced)  # every parameter's gradient is in it
    assert out["transfers"] == dict.fromkeys(out["transfers"], 0), out["transfers"]
