"""The timing harness of every benchmark here: compiled calls timed to completion, interleaved rounds, machine facts.

``time_calls`` times runners round by round in alternating order (machine noise hits every runner alike) and records
wall seconds, this process's CPU seconds and the share of the cores other processes used meanwhile, so a contended
figure can be recognised; ``summary`` reduces them to a median and a spread. Nothing here is specific to a workload.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the scripts run from anywhere: smoothjax and configs/ from this checkout
QUIET = 0.1  # a call is "quiet" when other processes used less than this share of the cores meanwhile


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _busy_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine since boot (/proc/stat), None where unavailable."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def time_calls(runners: dict, *, rounds: int, warmup: int = 1) -> dict:
    """Times each ``runner()`` (which must block until its result is ready) ``rounds`` times, interleaved.

    Returns ``{name: {"wall": [s, ...], "cpu": [s, ...], "other": [share, ...]}}``: wall seconds per call, this
    process's CPU seconds (all threads), and the share of all cores other processes used during the call."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times = {name: {"wall": [], "cpu": [], "other": []} for name in names}
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            b0, c0, w0 = _busy_seconds(), time.process_time(), time.perf_counter()
            runners[name]()
            wall, cpu, b1 = time.perf_counter() - w0, time.process_time() - c0, _busy_seconds()
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            times[name]["other"].append(None if b0 is None else round(max(0.0, b1 - b0 - cpu) / (wall * cores()), 3))
    return times


def summary(timing: dict, work: float, unit: str) -> dict:
    """Median rate (``work`` units per call / wall seconds), its min-max, CPU share and whether the calls were quiet."""
    rates = [work / w for w in timing["wall"]]
    others = [o for o in timing["other"] if o is not None]
    return {unit: round(statistics.median(rates), 3), "min": round(min(rates), 3), "max": round(max(rates), 3),
            "cpu_share": round(statistics.median(c / (w * cores()) for c, w in zip(timing["cpu"], timing["wall"])), 2),
            "quiet": bool(others) and max(others) < QUIET}


def ratio(times: dict, a: str, b: str) -> dict:
    """Speed of ``a`` over speed of ``b`` per round (paired): median and min-max."""
    ratios = [tb / ta for ta, tb in zip(times[a]["wall"], times[b]["wall"])]
    return {"ratio": round(statistics.median(ratios), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3)}


def machine_info() -> dict:
    """What the figures depend on: CPU, cores, load, versions, XLA flags."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"cpu": platform.processor() or platform.machine(), "cores": cores(), "load_average_at_start": load,
            "jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "python": platform.python_version()}


def random_model(name: str, num_classes: int = 10):
    """``(model, variables, apply_fn)``: a smoothjax model (CIFAR-10 normalisation) with random weights for 32x32x3
    images; throughput does not depend on the weights."""
    from smoothjax.models import get_model, make_apply_fn
    model = get_model(name, num_classes, dataset="cifar10")
    variables = jax.jit(lambda k: model.init(k, jax.numpy.zeros((1, 32, 32, 3)), train=False))(jax.random.key(0))
    return model, variables, make_apply_fn(model)


def write_results(result: dict, out) -> Path:
    """Writes ``result`` as indented JSON to ``out`` (parents created) and says where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out
