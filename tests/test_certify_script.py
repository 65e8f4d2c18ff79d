"""certify.py end to end on a tiny trained digits model: the reference log format, rows against independent oracles
(a direct ``certification.certify`` call, Clopper-Pearson / binomial tests recomputed with SciPy from the counts),
independence of batching and device count, SIGKILL + torn line + restart, and one-line errors that touch nothing.

One model is trained per test session (40 steps, conftest.trained); every certify run uses small n, so the file runs in a minute or two.
"""

import fcntl
import functools
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.stats

from conftest import ROOT, snapshot, subprocess_env
from smoothjax import analysis, certification, checkpointing, data
from smoothjax.models import make_apply_fn

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
PREDICT_HEADER = "idx\tlabel\tpredict\tcorrect\ttime"
SIGMA, N0, N, ALPHA, BATCH, SEED, MAX = 0.25, 20, 200, 0.001, 64, 0, 24
SMALL = [f"--config.certify.n0={N0}", f"--config.certify.n={N}", f"--config.certify.batch_size={BATCH}",
         f"--config.certify.max={MAX}"]


def _certify(workdir, *args, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "certify.py", "--config=configs/digits.py", f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(devices), capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(path) -> list[list[str]]:
    """Data rows of a log without the time column (the last one)."""
    lines = Path(path).read_text().split("\n")
    assert lines[-1] == "", "log does not end with a newline"
    return [line.split("\t")[:-1] for line in lines[1:-1]]



@pytest.fixture
def workdir(trained, tmp_path):
    """A private copy of the trained run (checkpoints + model.json, no certify logs)."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """The SMALL certification run with the digits defaults (8 images per step, 1 device): (log path, process)."""
    run = Path(shutil.copytree(trained, tmp_path_factory.mktemp("reference") / "run"))
    proc = _ok(_certify(run, *SMALL))
    return run / "certify" / f"certify_sigma_{SIGMA:.2f}.tsv", proc


@pytest.fixture(scope="module")
def oracle(trained):
    """In-process model, test images and the per-index key ``fold_in(key(seed), idx)``."""
    model, variables = checkpointing.load_model(trained)
    images, labels = data.get_source("digits", "test").get_batch(np.arange(MAX))
    common = dict(apply_fn=make_apply_fn(model), sigma=SIGMA, batch_size=BATCH, num_classes=10)
    counts = jax.jit(functools.partial(certification.sample_counts, **common), static_argnames="num")
    certify = jax.jit(functools.partial(certification.certify, n0=N0, n=N, alpha=ALPHA, **common))
    return dict(variables=variables, images=images, labels=labels, counts=counts, certify=certify,
                key=lambda idx: jax.random.fold_in(jax.random.key(SEED), idx))


# ------------------------------------------------------------------------------------------------ format
def test_log_has_reference_format_and_summary_is_printed(reference, oracle):
    path, proc = reference
    lines = path.read_text().split("\n")
    assert lines[0] == HEADER and lines[-1] == ""
    rows = [line.split("\t") for line in lines[1:-1]]
    assert [int(r[0]) for r in rows] == list(range(MAX))  # skip=1, max=24: indices 0..23, each once, in order
    assert all(len(r) == 6 for r in rows)
    assert [int(r[1]) for r in rows] == oracle["labels"].tolist()
    abstained = 0
    for idx, label, predict, radius, correct, seconds in rows:
        assert radius == f"{float(radius):.3}", radius  # the reference's '{:.3}' formatting
        assert correct == str(int(predict == label))
        analysis.parse_time(seconds)
        if predict == "-1":
            abstained += 1
            assert radius == "0.0" and correct == "0"
        else:
            assert float(radius) > 0 and 0 <= int(predict) < 10
    assert 0 < abstained < MAX, "the tiny model should both abstain and certify at n=200 (else the test is vacuous)"
    log = analysis.read_log(path)
    assert log.is_certification and len(log) == MAX
    accuracy = np.mean([r[2] == r[1] for r in rows])
    assert f"{MAX} images; certified accuracy at radius 0: {accuracy:.3f}" in proc.stdout
    assert "<b> &sigma; = 0.25 </b>| " in proc.stdout and "|  | r = 0.0 |" in proc.stdout
    # Progress: images done, samples/s and ETA, on stderr.
    assert f"certify {MAX}/{MAX} images" in proc.stderr and "samples_per_s=" in proc.stderr and "eta" in proc.stderr


def test_skip_and_max_select_every_skip_th_image(workdir):
    _ok(_certify(workdir, "--config.certify.skip=7", "--config.certify.max=4", f"--config.certify.n={N}",
                 f"--config.certify.n0={N0}"))
    assert [int(r[0]) for r in _rows(workdir / "certify" / "certify_sigma_0.25.tsv")] == [0, 7, 14, 21]
    _ok(_certify(workdir, "--config.certify.skip=7", "--config.certify.max=-1", f"--config.certify.n={N}",
                 f"--config.certify.n0={N0}"))  # max is not a setting of the rows: the same log is continued
    assert [int(r[0]) for r in _rows(workdir / "certify" / "certify_sigma_0.25.tsv")] == list(range(0, 360, 7))


def test_tag_names_a_second_log_and_an_older_sidecar_is_continued_and_upgraded(workdir):
    args = [f"--config.certify.n={N}", f"--config.certify.n0={N0}", "--config.certify.max=3"]
    _ok(_certify(workdir, *args, "--config.certify.tag=n200"))
    tagged = workdir / "certify" / "certify_n200_sigma_0.25.tsv"
    assert [int(r[0]) for r in _rows(tagged)] == [0, 1, 2]
    assert not (workdir / "certify" / "certify_sigma_0.25.tsv").exists()
    # A sidecar of the kind written before fingerprints: the machine's data path instead of what the data are.
    sidecar = tagged.with_name(tagged.name + ".json")
    settings = json.loads(sidecar.read_text())
    fingerprint = settings.pop("data_fingerprint")
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 71
    checksum = settings.pop("checkpoint_checksum")  # and before checkpoint checksums: none
    recorded = json.loads((workdir / "checkpoints" / "40" / "checksums.json").read_text())["checksum"]
    assert checksum == recorded
    sidecar.write_text(json.dumps({**settings, "data_path": "/elsewhere/digits"}))
    _ok(_certify(workdir, *args[:2], "--config.certify.max=5", "--config.certify.tag=n200"))
    assert [int(r[0]) for r in _rows(tagged)] == [0, 1, 2, 3, 4]
    assert json.loads(sidecar.read_text()) == {**settings, "data_fingerprint": fingerprint,
                                               "checkpoint_checksum": checksum}  # no path any more


def test_rbg_keys_are_recorded_and_a_run_resumes(reference, workdir):
    """key_impl=rbg: the sidecar records it (a threefry sidecar never names key_impl, so the committed logs
    continue), a second run keeps the rows of the first and appends the rest, a threefry run may not continue an rbg
    log, and a bad key_impl is a one-line error before anything is written. (rbg's draws are not exact under vmap
    over keys, so its rows depend on the batching too: no per-image oracle here, see docs/certification.md.)"""
    assert "key_impl" not in json.loads(Path(str(reference[0]) + ".json").read_text())
    args = [f"--config.certify.n={N}", f"--config.certify.n0={N0}", f"--config.certify.batch_size={BATCH}"]
    _ok(_certify(workdir, *args, "--config.certify.max=3", "--config.certify.key_impl=rbg"))
    log = workdir / "certify" / "certify_sigma_0.25.tsv"
    assert json.loads(Path(str(log) + ".json").read_text())["key_impl"] == "rbg"
    first = _rows(log)
    _ok(_certify(workdir, *args, "--config.certify.max=5", "--config.certify.key_impl=rbg"))
    rows = _rows(log)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4] and rows[:3] == first
    for r in rows:  # label, prediction (-1 = abstain), radius >= 0 (0 when abstaining), correct
        assert int(r[2]) in range(-1, 10) and float(r[3]) >= 0 and r[4] == str(int(r[1] == r[2]))
    assert [r[3] for r in rows] != [r[3] for r in _rows(reference[0])[:5]]  # other noise than threefry's
    proc = _certify(workdir, *args, "--config.certify.max=6")
    assert proc.returncode != 0 and "key_impl" in proc.stderr and [int(r[0]) for r in _rows(log)] == [0, 1, 2, 3, 4]
    proc = _certify(workdir, *args, "--config.certify.key_impl=philox", "--config.certify.tag=bad")
    assert proc.returncode != 0
    assert "certify.key_impl='philox' is not allowed; choose one of: threefry, rbg, unsafe_rbg" in proc.stderr
    assert not (workdir / "certify" / "certify_bad_sigma_0.25.tsv").exists()


# ------------------------------------------------------------------------------------------------ oracles
def test_rows_do_not_depend_on_batching_and_equal_direct_certify(reference, workdir, oracle):
    _ok(_certify(workdir, *SMALL, "--config.certify.images_per_step=1"))
    rows = _rows(workdir / "certify" / "certify_sigma_0.25.tsv")
    assert rows == _rows(reference[0])
    for idx in range(MAX):
        cert = oracle["certify"](oracle["key"](idx), variables=oracle["variables"], x=oracle["images"][idx])
        assert rows[idx][2:4] == [str(int(cert.prediction)), f"{float(cert.radius):.3}"], idx


def test_radius_is_clopper_pearson_from_the_counts(reference, oracle):
    rows = _rows(reference[0])
    certified = 0
    for idx in range(MAX):
        selection_key, estimation_key = jax.random.split(oracle["key"](idx))
        x, v = oracle["images"][idx], oracle["variables"]
        guess = int(np.argmax(oracle["counts"](selection_key, variables=v, x=x, num=N0)))
        n_a = int(oracle["counts"](estimation_key, variables=v, x=x, num=N)[guess])
        p_a = scipy.stats.beta.ppf(ALPHA, n_a, N - n_a + 1) if n_a > 0 else 0.0
        predict, radius = rows[idx][2], rows[idx][3]
        if p_a < 0.5:
            assert (predict, radius) == ("-1", "0.0"), (idx, n_a)
            continue
        certified += 1
        expected = SIGMA * scipy.stats.norm.ppf(p_a)
        assert predict == str(guess)
        half_unit = 0.5 * 10.0 ** (math.floor(math.log10(expected)) - 2)  # 3 significant digits
        assert abs(float(radius) - expected) <= half_unit * (1 + 1e-5), (idx, radius, expected)
    assert certified > 0


def test_predict_mode_is_the_binomial_test_on_the_counts(workdir, oracle):
    proc = _ok(_certify(workdir, *SMALL, "--config.certify.mode=predict"))
    path = workdir / "certify" / "predict_sigma_0.25.tsv"
    assert path.read_text().split("\n")[0] == PREDICT_HEADER
    assert not (workdir / "certify" / "certify_sigma_0.25.tsv").exists()
    rows = _rows(path)
    assert [int(r[0]) for r in rows] == list(range(MAX)) and all(len(r) == 4 for r in rows)
    abstained = 0
    for idx, (_, label, predict, correct) in enumerate(rows):
        counts = np.asarray(oracle["counts"](oracle["key"](idx), variables=oracle["variables"],
                                             x=oracle["images"][idx], num=N))
        n_a, n_b = np.sort(counts)[::-1][:2]
        abstain = scipy.stats.binomtest(int(n_a), int(n_a + n_b), 0.5).pvalue > ALPHA
        abstained += abstain
        assert predict == ("-1" if abstain else str(int(np.argmax(counts)))), idx
        assert label == str(oracle["labels"][idx]) and correct == str(int(predict == label))
    assert abstained < MAX
    log = analysis.read_log(path)
    assert not log.is_certification and len(log) == MAX
    accuracy = np.mean([r[2] == r[1] for r in rows])
    assert f"{MAX} images; accuracy {accuracy:.3f}, abstention rate {abstained / MAX:.3f}" in proc.stdout


def test_four_devices_give_the_same_rows(reference, workdir):
    # 23 images, 3 per step rounded up to 4 (the device count): the last step is padded.
    proc = _ok(_certify(workdir, *SMALL, "--config.certify.max=23", "--config.certify.images_per_step=3", devices=4))
    assert "4 images per step on 4 devices" in proc.stderr
    assert _rows(workdir / "certify" / "certify_sigma_0.25.tsv") == _rows(reference[0])[:23]


# ------------------------------------------------------------------------------------------------ resume
def test_sigkill_and_torn_line_then_restart_equals_an_uninterrupted_run(trained, tmp_path):
    # n large enough that one image takes a noticeable time, so the run can be killed in the middle.
    args = ["--config.certify.n=6000", "--config.certify.n0=50", "--config.certify.batch_size=1000",
            "--config.certify.max=16", "--config.certify.images_per_step=1"]
    killed = Path(shutil.copytree(trained, tmp_path / "killed"))
    log = killed / "certify" / "certify_sigma_0.25.tsv"
    cmd = [sys.executable, "certify.py", "--config=configs/digits.py", f"--workdir={killed}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count("\n") >= 1 + 3:  # header + 3 rows
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = log.read_text()
    done = before.count("\n") - 1
    assert 3 <= done < 16, done
    with open(log, "a") as f:  # a torn row, as if killed in the middle of a write
        f.write(f"{done}\t3\t")
    resumed = _ok(_certify(killed, *args))
    assert f"certify: {16 - done} of 16 digits test images to go" in resumed.stderr
    after = log.read_text()
    assert after.startswith(before)  # the complete rows were kept (time column included), not recomputed

    fresh = Path(shutil.copytree(trained, tmp_path / "fresh"))
    _ok(_certify(fresh, *args))
    rows = _rows(log)
    assert [int(r[0]) for r in rows] == list(range(16))
    assert rows == _rows(fresh / "certify" / "certify_sigma_0.25.tsv")
    again = _ok(_certify(killed, *args))  # complete: nothing to do, the file stays as it is
    assert "certify: 0 of 16" in again.stderr and log.read_text() == after


# ------------------------------------------------------------------------------------------------ bad input
def _place_reference_log(workdir, reference, name):
    (workdir / "certify").mkdir()
    shutil.copy(reference[0], workdir / "certify" / name)
    shutil.copy(reference[0].with_name(reference[0].name + ".json"), workdir / "certify" / (name + ".json"))


def _empty_checkpoint(workdir, reference):
    (step,) = (workdir / "checkpoints").iterdir()
    shutil.rmtree(step)
    step.mkdir()


BAD = {
    "sigma_zero": (["--config.certify.sigma=0"], None, "certify.sigma=0.0 "),
    "sigma_negative": (["--config.certify.sigma=-0.5"], None, "certify.sigma=-0.5 "),
    "alpha_zero": (["--config.certify.alpha=0"], None, "certify.alpha=0"),
    "alpha_one": (["--config.certify.alpha=1.0"], None, "certify.alpha=1.0 "),
    "n0_zero": (["--config.certify.n0=0"], None, "certify.n0=0 "),
    "n_zero": (["--config.certify.n=0"], None, "certify.n=0 "),
    "tag_with_underscore": (["--config.certify.tag=a_b"], None, "certify.tag='a_b' "),
    "no_checkpoint": ([], lambda w, r: shutil.rmtree(w / "checkpoints"), "no checkpoint in"),
    "empty_checkpoint": ([], _empty_checkpoint, "cannot be loaded"),
    "other_sigma_log": (["--config.certify.sigma=0.5"],
                        lambda w, r: _place_reference_log(w, r, "certify_sigma_0.50.tsv"), "sigma=0.25 (now 0.5)"),
    "other_split_log": (["--config.certify.split=train"],
                        lambda w, r: _place_reference_log(w, r, "certify_sigma_0.25.tsv"),
                        "split='test' (now 'train')"),
}


def _assert_one_line_error(proc, needle):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("certify.py: error: "), proc.stderr[-3000:]
    assert needle in lines[0], lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_one_line_error_that_touches_nothing(case, workdir, reference):
    args, setup, needle = BAD[case]
    if setup is not None:
        setup(workdir, reference)
    before = snapshot(workdir)
    _assert_one_line_error(_certify(workdir, *SMALL, *args), needle)
    assert snapshot(workdir) == before  # byte-identical, and no new files or directories


def test_foreign_logs_and_data_are_refused(workdir, shared_dir):
    cohen = shared_dir / "reference/cohen2019/data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25"
    (workdir / "certify").mkdir()
    shutil.copy(cohen, workdir / "certify" / "certify_sigma_0.25.tsv")  # a log without our settings file
    before = snapshot(workdir)
    _assert_one_line_error(_certify(workdir, *SMALL), "certify_sigma_0.25.tsv.json")
    cifar = shared_dir / "data" / "cifar10-test.npz"
    _assert_one_line_error(_certify(workdir, *SMALL, "--config.dataset=cifar10", f"--config.data_path={cifar}"),
                           "(32, 32, 3)")
    assert snapshot(workdir) == before


def test_a_log_another_process_is_writing_is_left_alone(workdir, reference):
    _place_reference_log(workdir, reference, "certify_sigma_0.25.tsv")
    log = workdir / "certify" / "certify_sigma_0.25.tsv"
    with open(log, "a") as f:
        f.write("24\t3\t")  # a row being written right now
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)  # as a running certify.py holds it
        before = snapshot(workdir)
        _assert_one_line_error(_certify(workdir, *SMALL, "--config.certify.max=30"), "another certify.py process")
        assert snapshot(workdir) == before
