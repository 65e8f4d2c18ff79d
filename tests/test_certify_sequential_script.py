"""certify.py's sequential mode, sound noise and randomized Clopper-Pearson, end to end on a tiny trained digits model.

Rows are checked against independent computations: direct library calls with the per-index key
``fold_in(key(seed), idx)``, images rounded to the 1/255 grid by NumPy, and the samples column summarised by NumPy.
One model is trained per test session (40 steps, conftest.trained); every run is small.
"""

import functools
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ROOT, snapshot, subprocess_env
from smoothjax import analysis, certification, checkpointing, data
from smoothjax.models import make_apply_fn
from smoothjax.certification import certify_randomized, certify_sequential

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples"
SIGMA, N0, MAX_SAMPLES, BATCH, ALPHA, SEED, MAX = 0.25, 20, 3000, 250, 0.001, 0, 12
RADII = (0.0, 0.125, 0.25, 0.375)
SEQUENTIAL = ["--config.certify.mode=sequential", f"--config.certify.n0={N0}",
              f"--config.certify.max_samples={MAX_SAMPLES}", f"--config.certify.batch_size={BATCH}",
              f"--config.certify.max={MAX}", "--config.certify.radii=" + ",".join(map(str, RADII))]
LOG = f"sequential_sigma_{SIGMA:.2f}.tsv"


def _certify(workdir, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "certify.py", "--config=configs/digits.py", f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(path):
    """Data rows of a log as lists of fields, without the time column (the 6th)."""
    lines = Path(path).read_text().split("\n")
    assert lines[-1] == "", "log does not end with a newline"
    return [[f for j, f in enumerate(line.split("\t")) if j != 5] for line in lines[1:-1]]



@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """The sequential run with the digits defaults (8 images per step): (workdir, process)."""
    run = Path(shutil.copytree(trained, tmp_path_factory.mktemp("reference") / "run"))
    return run, _ok(_certify(run, *SEQUENTIAL))


@pytest.fixture(scope="module")
def oracle(trained):
    model, variables = checkpointing.load_model(trained)
    images, labels = data.get_source("digits", "test").get_batch(np.arange(MAX))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(SEED), i))(np.arange(MAX))
    return dict(apply_fn=make_apply_fn(model), variables=variables, images=np.asarray(images, np.float32),
                labels=np.asarray(labels), keys=keys)


# ------------------------------------------------------------------------------------------------ sequential
def test_sequential_log_has_the_samples_column_and_equals_direct_calls(reference, oracle):
    run, proc = reference
    path = run / "certify" / LOG
    lines = path.read_text().split("\n")
    assert lines[0] == HEADER
    rows = [line.split("\t") for line in lines[1:-1]]
    assert [int(r[0]) for r in rows] == list(range(MAX)) and all(len(r) == 7 for r in rows)
    samples = np.array([int(r[6]) for r in rows])
    assert np.all(samples <= N0 + MAX_SAMPLES) and np.all(samples >= N0 + BATCH)
    assert np.all((samples - N0) % BATCH == 0)  # whole batches (MAX_SAMPLES is a multiple of BATCH)
    assert len(set(samples.tolist())) > 1, "images should stop at different times (else the test is vacuous)"
    assert np.any(samples < N0 + MAX_SAMPLES), "some image should stop early"

    cert = jax.jit(functools.partial(certify_sequential, apply_fn=oracle["apply_fn"], sigma=SIGMA, radii=RADII,
                                     alpha=ALPHA, n0=N0, max_samples=MAX_SAMPLES, batch_size=BATCH,
                                     num_classes=10))(oracle["keys"], variables=oracle["variables"],
                                                      x=oracle["images"])
    for i, (idx, label, predict, radius, correct, _, used) in enumerate(rows):
        assert label == str(oracle["labels"][i])
        assert predict == str(int(cert.prediction[i])) and radius == f"{float(cert.radius[i]):.3}", i
        assert used == str(int(cert.num_samples[i])) and correct == str(int(predict == label))

    log = analysis.read_log(path)  # the extra column is kept, typed
    assert log.is_certification and len(log) == MAX
    np.testing.assert_array_equal(log.extra["samples"], samples)
    assert log.extra["samples"].dtype == np.int64
    summary = analysis.samples_summary(log)
    assert summary.mean == pytest.approx(samples.mean()) and summary.median == pytest.approx(np.median(samples))
    assert (summary.min, summary.max, summary.total, summary.n) == (samples.min(), samples.max(), samples.sum(), MAX)
    assert (f"samples per image: mean {samples.mean():.1f}, median {np.median(samples):.1f} (min {samples.min()}, "
            f"max {samples.max()}; total {samples.sum()} over {MAX} images)") in proc.stdout
    settings = json.loads(path.with_name(LOG + ".json").read_text())
    assert settings["radii"] == list(RADII) and settings["cs_method"] == "betting"
    assert (settings["futility"], settings["futility_level"]) == ("projected", 0.01)
    assert settings["max_samples"] == MAX_SAMPLES and "n" not in settings


def test_analysis_cli_reports_samples_next_to_the_table(reference, capsys):
    path = reference[0] / "certify" / LOG
    assert analysis.main([str(path), "--labels", "seq"]) == 0
    out = capsys.readouterr().out
    samples = np.array([int(r[5]) for r in _rows(path)])
    assert out.startswith("|  | r = 0.0 |")
    assert f"seq: samples per image: mean {samples.mean():.1f}, median {np.median(samples):.1f}" in out


def test_samples_summary_of_handmade_logs(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n")
    assert analysis.samples_summary(analysis.read_log(plain)) is None
    seq = tmp_path / "seq.tsv"
    seq.write_text(HEADER + "\n" + "".join(f"{i}\t1\t1\t0.5\t1\t0.1\t{s}\n" for i, s in enumerate([120, 370, 10120])))
    s = analysis.samples_summary(analysis.read_log(seq))
    assert (s.n, s.mean, s.median, s.min, s.max, s.total) == (3, 3536.6666666666665, 370.0, 120, 10120, 10610)
    seq.write_text(HEADER + "\n0\t1\t1\t0.5\t1\t0.1\t-5\n")
    with pytest.raises(ValueError, match="samples"):
        analysis.samples_summary(analysis.read_log(seq))


def test_sigkill_then_restart_equals_the_uninterrupted_run(reference, trained, tmp_path):
    # One image per step (the reference used 8): the rows must not depend on that either.
    args = [*SEQUENTIAL, "--config.certify.images_per_step=1"]
    killed = Path(shutil.copytree(trained, tmp_path / "killed"))
    log = killed / "certify" / LOG
    cmd = [sys.executable, "certify.py", "--config=configs/digits.py", f"--workdir={killed}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count("\n") >= 1 + 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = log.read_text()
    done = before.count("\n") - 1
    assert 2 <= done < MAX, done
    with open(log, "a") as f:
        f.write(f"{done}\t3\t3\t0.1")  # a torn row
    resumed = _ok(_certify(killed, *args))
    assert f"sequential: {MAX - done} of {MAX} digits test images to go" in resumed.stderr
    assert log.read_text().startswith(before)
    assert _rows(log) == _rows(reference[0] / "certify" / LOG)


@pytest.mark.parametrize("change, needle", [
    ("--config.certify.radii=0,0.125,0.25", "radii=[0.0, 0.125, 0.25, 0.375] (now [0.0, 0.125, 0.25])"),
    ("--config.certify.cs_method=union", "cs_method='betting' (now 'union')"),
    ("--config.certify.futility=exact", "futility='projected' (now 'exact')"),
])
def test_other_sequential_settings_are_refused_and_touch_nothing(reference, tmp_path, change, needle):
    run = Path(shutil.copytree(reference[0], tmp_path / "run"))
    before = snapshot(run)
    proc = _certify(run, *SEQUENTIAL, change)
    assert proc.returncode != 0 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("certify.py: error: ") and needle in lines[0], proc.stderr
    assert snapshot(run) == before


@pytest.mark.parametrize("changes, needle", [
    (dict(radii="0.5,0.25"), "certify.radii='0.5,0.25' is not allowed"),
    (dict(radii="0,inf"), "certify.radii='0,inf' is not allowed"),
    (dict(cs_method="bonferroni"), "certify.cs_method='bonferroni' is not allowed"),
    (dict(max_samples=0), "certify.max_samples=0 is not allowed"),
    (dict(futility="never"), "certify.futility='never' is not allowed"),
    (dict(futility_level=1.0), "certify.futility_level=1.0 is not allowed"),
    (dict(mode="predict", randomized_cp=True), "randomized_cp=True is not allowed with mode='predict'"),
])
def test_bad_settings_are_refused(changes, needle):
    from configs.digits import get_config
    from smoothjax.jobs import certify_modes

    cc = get_config().certify
    cc.update({"mode": "sequential", **changes})
    with pytest.raises(ValueError, match=re.escape(needle)):
        certify_modes.get(cc).validate(cc, SIGMA)


def test_default_radius_grid_is_quarter_steps_up_to_three_sigma():
    from smoothjax.jobs import certify_modes

    assert certify_modes.resolve_radii("", 0.25) == (0.0, 0.25, 0.5, 0.75)
    assert certify_modes.resolve_radii("", 1.0) == tuple(0.25 * np.arange(13))
    assert certify_modes.resolve_radii("0:0.5:0.25", 0.25) == (0.0, 0.25, 0.5)
    assert certify_modes.resolve_radii((0.1, 0.2), 0.25) == (0.1, 0.2)


# ------------------------------------------------------------------------------------ sound and randomized CP
def test_sound_certify_rounds_to_the_grid_and_logs_separately(trained, tmp_path, oracle):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    proc = _ok(_certify(run, "--config.certify.sound=True", f"--config.certify.n0={N0}", "--config.certify.n=300",
                        f"--config.certify.batch_size={BATCH}", "--config.certify.max=6"))
    path = run / "certify" / "certify_sound_sigma_0.25.tsv"
    assert sorted(p.name for p in (run / "certify").iterdir()) == [path.name, path.name + ".json"]
    assert "certificate is for the rounded image" in proc.stderr
    assert "sound" in json.loads(path.with_name(path.name + ".json").read_text())
    rounded = np.round(oracle["images"][:6].astype(np.float64) * 255) / 255  # the digits are k/16: off the grid
    assert np.max(np.abs(rounded - oracle["images"][:6])) > 1e-3
    cert = jax.jit(functools.partial(certification.certify, apply_fn=oracle["apply_fn"], sigma=SIGMA, n0=N0, n=300,
                                     alpha=ALPHA, batch_size=BATCH, num_classes=10, sound=True))(
        oracle["keys"][:6], variables=oracle["variables"], x=rounded.astype(np.float32))
    rows = _rows(path)
    assert [r[2:4] for r in rows] == [[str(int(p)), f"{float(r):.3}"] for p, r in zip(cert.prediction, cert.radius)]
    assert any(r[2] != "-1" for r in rows)


def test_randomized_clopper_pearson_rows_are_logged_separately(trained, tmp_path, oracle):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    _ok(_certify(run, "--config.certify.randomized_cp=True", f"--config.certify.n0={N0}", "--config.certify.n=300",
                 f"--config.certify.batch_size={BATCH}", "--config.certify.max=6"))
    path = run / "certify" / "certify_randomized_sigma_0.25.tsv"
    assert path.exists() and not (run / "certify" / "certify_sigma_0.25.tsv").exists()
    assert json.loads(path.with_name(path.name + ".json").read_text())["randomized_cp"] is True
    cert = jax.jit(functools.partial(certify_randomized, apply_fn=oracle["apply_fn"], sigma=SIGMA, n0=N0, n=300,
                                     alpha=ALPHA, batch_size=BATCH, num_classes=10))(
        oracle["keys"][:6], variables=oracle["variables"], x=oracle["images"][:6])
    assert [r[2:4] for r in _rows(path)] == [[str(int(p)), f"{float(r):.3}"]
                                             for p, r in zip(cert.prediction, cert.radius)]


def test_grid_tests_through_certify_py_equal_direct_calls(trained, tmp_path, oracle):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    proc = _ok(_certify(run, *SEQUENTIAL[:4], "--config.certify.max=6", "--config.certify.cs_method=grid",
                        "--config.certify.radii=" + ",".join(map(str, RADII))))
    assert "sequential: grid bounds" in proc.stdout + proc.stderr
    cert = jax.jit(functools.partial(certify_sequential, apply_fn=oracle["apply_fn"], sigma=SIGMA, radii=RADII,
                                     alpha=ALPHA, n0=N0, max_samples=MAX_SAMPLES, batch_size=BATCH, num_classes=10,
                                     method="grid"))(oracle["keys"][:6], variables=oracle["variables"],
                                                     x=oracle["images"][:6])
    rows = _rows(run / "certify" / LOG)
    assert [r[2:4] + r[5:] for r in rows] == [[str(int(p)), f"{float(r):.3}", str(int(n))] for p, r, n in
                                               zip(cert.prediction, cert.radius, cert.num_samples)]
    certified = [float(r[3]) for r in rows if r[2] != "-1"]
    assert certified and set(certified) <= {float(f"{r:.3}") for r in RADII}  # grid radii only
