"""Timing on a shared machine: interleaved rounds, waits for quiet, CPU shares of each call, paired ratios.

Used by every benchmark script here; nothing in it is specific to one workload.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

QUIET = 0.1  # A timed call is "quiet" when other processes used less than this share of all cores meanwhile.


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_results(result: dict, out) -> Path:
    """Writes ``result`` as indented JSON to ``out`` (parents created) and says where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return out


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where unavailable)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def warn_if_busy(info: dict) -> None:
    """Prints a warning when the machine is already loaded (other jobs): figures will be contended."""
    load = info.get("load_average_at_start")
    if load is not None and load > 0.5 * info["cores"]:
        print(f"WARNING: load average {load} on {info['cores']} cores before starting: other jobs are running, "
              "absolute figures will be low and noisy, and ratios too are distorted (PyTorch's spin-waiting OpenMP "
              "threads lose more to oversubscription than XLA's pool); see cpu_share and load_average in the JSON")


def busy_cpu_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine since boot, from /proc/stat (None where unavailable)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # Minus idle and iowait; steal counts.


def other_load(window: float = 1.0) -> float | None:
    """Share of all cores that other processes keep busy over the next ``window`` seconds (we sleep meanwhile)."""
    b0, c0 = busy_cpu_seconds(), time.process_time()
    time.sleep(window)
    b1, c1 = busy_cpu_seconds(), time.process_time()
    if b0 is None:
        return None
    return max(0.0, (b1 - b0) - (c1 - c0)) / (window * cores())


def wait_for_quiet(max_wait: float, threshold: float = QUIET) -> float | None:
    """Sleeps until other processes use < ``threshold`` of the cores (1 s windows) or ``max_wait`` s have passed."""
    deadline = time.monotonic() + max_wait
    load = other_load() if max_wait > 0 else None
    while load is not None and load >= threshold and time.monotonic() < deadline:
        load = other_load()
    return load


def time_interleaved(runners: dict, *, rounds: int, warmup: int = 0, idle_wait: float = 0.0) -> dict:
    """Times each runner ``rounds`` times, interleaved round by round (order alternating between rounds).

    ``warmup`` untimed rounds come first; before each timed round it waits up to ``idle_wait`` seconds for the
    machine to be quiet (``wait_for_quiet``). Returns {name: {"wall": [...], "cpu": [...], "other": [...]}} per
    call: wall seconds, this process's CPU seconds (all threads), and the share of all cores that *other*
    processes used meanwhile (0 = the call had the machine to itself).
    """
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times = {name: {"wall": [], "cpu": [], "other": []} for name in names}
    for i in range(rounds):
        wait_for_quiet(idle_wait)
        for name in (names if i % 2 == 0 else names[::-1]):
            b0, c0, w0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
            runners[name]()
            wall, cpu, b1 = time.perf_counter() - w0, time.process_time() - c0, busy_cpu_seconds()
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            times[name]["other"].append(None if b0 is None else round(max(0.0, b1 - b0 - cpu) / (wall * cores()), 3))
    return times


def cpu_share(timing: dict) -> float:
    """Median over calls of this process's CPU seconds / (wall seconds x cores)."""
    return round(statistics.median(c / (w * cores()) for c, w in zip(timing["cpu"], timing["wall"])), 2)


def paired_ratios(times: dict) -> dict:
    """(jax speed) / (torch speed) per round: median, spread, and the median over quiet rounds only.

    A round is quiet when other processes used < ``QUIET`` of the cores during both of its calls; under
    oversubscription PyTorch's spin-waiting OpenMP threads lose more than XLA's pool, so quiet rounds are the
    fair comparison. ``ratio_quiet`` is None when no round was quiet.
    """
    ratios = [t / j for j, t in zip(times["jax"]["wall"], times["torch"]["wall"])]
    quiet = [r for r, a, b in zip(ratios, times["jax"]["other"], times["torch"]["other"])
             if a is not None and b is not None and a < QUIET and b < QUIET]
    return {"ratio_jax_over_torch": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3), "ratio_quiet": round(statistics.median(quiet), 3) if quiet else None,
            "quiet_rounds": len(quiet), "rounds": len(ratios)}
