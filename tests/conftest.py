"""Test-wide set-up: a persistent JAX compilation cache (a cold process compiles far less) and shared paths."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))  # configs/ is importable as in train.py
CACHE_DIR = os.environ.setdefault("SMOOTHJAX_TEST_CACHE", str(ROOT / ".cache" / "jax"))
# Tests compile many small programs and run most once: LLVM level 1 compiles ~1.4x faster than the default level 3 and
# runs the few training-heavy tests as fast (level 0 compiles faster still but trains several times slower). Results
# stay within float tolerance; set XLA_FLAGS with a level of your own to override.
FAST_COMPILE = "--xla_backend_optimization_level=1"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def subprocess_env(num_devices: int = 1, **extra) -> dict:
    """Environment for a child Python process: forced CPU device count and the shared compilation cache."""
    env = dict(os.environ)
    inherited = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={num_devices}", *inherited])
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = CACHE_DIR
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def shared_dir():
    """The shared data/reference folder beside the repo; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    return SHARED


def snapshot(directory) -> dict:
    """Every path under ``directory`` with its bytes (None for folders): equal snapshots = nothing touched."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(Path(directory).rglob("*"))}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A digits model trained by train.py for 40 steps (no evaluation), shared by the whole session.

    Tests must not write into it: copy it first (certify logs go into the workdir)."""
    import subprocess

    workdir = tmp_path_factory.mktemp("trained") / "run"
    proc = subprocess.run([sys.executable, "train.py", "--config=configs/digits.py", f"--workdir={workdir}",
                           "--config.total_steps=40", "--config.eval_split="], cwd=ROOT, env=subprocess_env(1),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir
