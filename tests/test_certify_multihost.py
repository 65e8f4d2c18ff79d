"""certify.py on two local processes (jax.distributed on 127.0.0.1, gloo, one CPU device each) writes the log of one
process: same rows (all columns but ``time``), one log and one settings sidecar, written by process 0 only. A run
with an error on process 0 alone (the log is locked) stops both processes with the same one-line error and touches
nothing; after a kill (torn last line) two processes continue the log without losing or duplicating rows.

The one-process runs are themselves checked against direct library calls in test_certify_script.py and
test_certify_sequential_script.py; here the labels and ``correct`` columns are also checked against the data set."""

import fcntl
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, snapshot, subprocess_env
from smoothjax import data

MAX = 10  # images; 4 per step on 2 processes: steps of 2 + 2 images, the last step half padding
COMMON = [f"--config.certify.max={MAX}", "--config.certify.images_per_step=4", "--config.certify.n0=20",
          "--config.certify.batch_size=100"]
MODES = {"certify": (["--config.certify.n=200"], "certify_sigma_0.25.tsv"),
         "sequential": (["--config.certify.mode=sequential", "--config.certify.max_samples=1000",
                         "--config.certify.radii=0,0.125,0.25"], "sequential_sigma_0.25.tsv")}


def _command(workdir, args) -> list:
    return [sys.executable, "certify.py", "--config=configs/digits.py", f"--workdir={workdir}", *COMMON, *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(workdir, args) -> list:
    """certify.py as processes 0 and 1 of a two-process system (Popen objects, not yet waited for)."""
    port = _free_port()
    return [subprocess.Popen(_command(workdir, [*args, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                                                "--config.distributed.num_processes=2",
                                                f"--config.distributed.process_id={i}"]),
                             cwd=ROOT, env=subprocess_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def _wait(procs) -> list:
    """(returncode, stdout, stderr) of each process; kills the rest if one hangs."""
    try:
        return [(p, *p.communicate(timeout=240)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise


def _ours(stdout: str) -> str:
    """stdout without gloo's own connection lines (printed by its C++ code on every process)."""
    return "".join(line for line in stdout.splitlines(keepends=True) if not line.startswith("[Gloo]"))


def _rows(path) -> list:
    """Data rows of a log as lists of fields, without the time column (the 6th)."""
    lines = Path(path).read_text().split("\n")
    assert lines[-1] == "", "log does not end with a newline"
    return [[f for j, f in enumerate(line.split("\t")) if j != 5] for line in lines[1:-1]]


@pytest.fixture(scope="module")
def runs(trained, tmp_path_factory) -> dict:
    """Each mode run as one process and, at the same time, as two: mode -> (log name, one workdir, two workdir,
    one-process result, the two processes' (Popen, stdout, stderr))."""
    out = {}
    for mode, (args, name) in MODES.items():
        root = tmp_path_factory.mktemp(f"multihost_{mode}")
        one, two = (Path(shutil.copytree(trained, root / d)) for d in ("one", "two"))
        procs = _start_pair(two, args)
        single = subprocess.run(_command(one, args), cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True,
                                timeout=240)
        out[mode] = (name, one, two, single, _wait(procs))
    return out


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_processes_write_the_log_of_one_process(runs, mode):
    name, one, two, single, results = runs[mode]
    assert single.returncode == 0, single.stderr[-3000:]
    for p, _, err in results:
        assert p.returncode == 0, err[-3000:]
    rows = _rows(one / "certify" / name)
    assert _rows(two / "certify" / name) == rows
    assert (two / "certify" / name).read_text().split("\n")[0] == (one / "certify" / name).read_text().split("\n")[0]
    # The rows are the images asked for, with their labels, and `correct` is predict == label (NumPy re-derivation).
    _, labels = data.get_source("digits", "test").get_batch(np.arange(MAX))
    assert [int(r[0]) for r in rows] == list(range(MAX)) and [int(r[1]) for r in rows] == labels.tolist()
    assert all(int(r[4]) == int(int(r[2]) == int(r[1])) for r in rows)
    assert len({r[3] for r in rows}) > 2  # radii differ between images: equality above is not vacuous
    if mode == "sequential":
        assert all(len(r) == 6 and 20 < int(r[5]) <= 1020 for r in rows)
    # One log and its sidecar (equal to one process's), no temporary files; process 1 writes and prints nothing.
    assert {p.name for p in (two / "certify").iterdir()} == {name, name + ".json"}
    assert (two / "certify" / (name + ".json")).read_text() == (one / "certify" / (name + ".json")).read_text()
    assert _ours(results[0][1]) == single.stdout and "ACR" in single.stdout
    assert _ours(results[1][1]) == "" and "to go" not in results[1][2] and "to go" in results[0][2]


def test_an_error_of_process_0_alone_stops_both_then_a_killed_run_resumes(runs, tmp_path):
    """Process 0 cannot lock the log (another writer holds it): both processes exit with the same error line and the
    workdir is untouched. Once the lock is free, the log of a killed run (3 rows and a torn line) is completed."""
    mode = "certify"  # the resume and error paths do not depend on the mode
    name, one, two, _, _ = runs[mode]
    work = Path(shutil.copytree(two, tmp_path / "run"))
    log = work / "certify" / name
    full = log.read_text()
    head = "".join(full.splitlines(keepends=True)[:4])
    log.write_text(head + full.splitlines(keepends=True)[4][:7])  # header, 3 rows, part of the 4th (a kill)
    before = snapshot(work)
    with open(log, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        results = _wait(_start_pair(work, MODES[mode][0]))
    errors = [err.strip().splitlines()[-1] for _, _, err in results]
    assert [p.returncode for p, _, _ in results] == [1, 1], errors
    assert errors[0] == errors[1] and errors[0].startswith("certify.py: error: ") and "another certify.py" in errors[0]
    assert snapshot(work) == before

    results = _wait(_start_pair(work, MODES[mode][0]))
    for p, _, err in results:
        assert p.returncode == 0, err[-3000:]
    assert f"{MAX - 3} of {MAX} digits test images to go" in results[0][2]
    assert log.read_text().startswith(head)  # the complete rows are kept as they were, time column included
    assert _rows(log) == _rows(one / "certify" / name)
    assert {p.name for p in log.parent.iterdir()} == {name, name + ".json"}
