"""The committed CIFAR-10 results (results/cifar10/) check out against the lossless test set and re-derive.

For every certification log committed under ``results/cifar10/<run>/certify/``:
- its rows are Cohen et al.'s protocol on the lossless CIFAR-10 test set: idx 0, skip, 2 * skip, ... in order, each
  once, and each row's label is the test set's label of that idx (``../shared/data/cifar10-test.npz``, an oracle
  independent of our data pipeline);
- its first affordable row is re-derived from the committed workdir by the library function the mode names
  (``certification.certify`` or ``certify_sequential``) with the key ``fold_in(key(seed), idx)`` and the settings in
  the log's sidecar, as results/cifar10/README.md documents. A sequential log's first row of at most 10,100 forward
  passes is taken; a log whose every row costs more (n = 100,000) is re-derived only with
  ``SMOOTHJAX_SLOW_RESULTS=1`` (minutes per row here).

Skips cleanly when ../shared (the test set) or results/cifar10 is absent.
"""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ROOT, SHARED

RESULTS = ROOT / "results" / "cifar10"
LOGS = sorted(RESULTS.glob("*/certify/*.tsv")) if RESULTS.is_dir() else []


def _rows(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return header, [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


@pytest.fixture(scope="module")
def test_set():
    path = SHARED / "data" / "cifar10-test.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with np.load(path) as npz:
        return npz["x"], npz["y"]


@pytest.mark.skipif(not LOGS, reason="no committed results/cifar10 logs")
@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_log_rows_are_the_protocol_on_the_lossless_test_set(log, test_set):
    _, labels = test_set
    settings = json.loads(Path(f"{log}.json").read_text())
    assert settings["dataset"] == "cifar10" and settings["split"] == "test" and settings["num_examples"] == 10000
    _, rows = _rows(log)
    assert rows, f"{log} has no rows"
    idx = [int(r["idx"]) for r in rows]
    skip = settings["skip"]
    assert idx == list(range(0, skip * len(idx), skip)), f"{log}: rows are not idx 0, {skip}, {2 * skip}, ..."
    assert [int(r["label"]) for r in rows] == labels[idx].tolist()
    assert all(int(r["correct"]) == int(r["predict"] == r["label"]) for r in rows)


def _rederive(settings, workdir, image, idx):
    from smoothjax import certification, checkpointing
    from smoothjax.models import make_apply_fn

    model, variables = checkpointing.load_model(workdir, settings["checkpoint_step"])
    spec = checkpointing.read_model_spec(workdir)
    key = jax.random.fold_in(jax.random.key(settings["seed"]), idx)
    common = dict(sigma=settings["sigma"], alpha=settings["alpha"], batch_size=settings["batch_size"],
                  num_classes=int(spec["num_classes"]))
    if settings["mode"] == "certify":
        cert = certification.certify(key, make_apply_fn(model), variables, image, n0=settings["n0"],
                                     n=settings["n"], **common)
        return int(cert.prediction), float(cert.radius), None
    radii = tuple(float(r) for r in settings["radii"])
    cert = certification.certify_sequential(
        key, make_apply_fn(model), variables, image, radii=radii, n0=settings["n0"],
        max_samples=settings["max_samples"], method=settings["cs_method"], futility=settings["futility"],
        futility_level=float(settings["futility_level"]), **common)
    return int(cert.prediction), float(cert.radius), int(cert.num_samples)


@pytest.mark.skipif(not LOGS, reason="no committed results/cifar10 logs")
@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_a_row_is_rederived_from_the_committed_workdir(log, test_set):
    settings = json.loads(Path(f"{log}.json").read_text())
    if settings["mode"] not in ("certify", "sequential") or any(k.startswith(("sound", "randomized"))
                                                                   for k in settings):
        pytest.skip(f"mode {settings['mode']!r}: only plain certify and sequential logs are re-derived here")
    _, rows = _rows(log)
    # The first row that costs at most 10,100 forward passes (a sequential row records its own count).
    row = next((r for r in rows if int(r.get("samples", settings.get("n", 0) + settings["n0"])) <= 10_100), None)
    if row is None and os.environ.get("SMOOTHJAX_SLOW_RESULTS") != "1":
        pytest.skip(f"every row costs more than 10,100 draws: set SMOOTHJAX_SLOW_RESULTS=1 to re-derive")
    row = row or rows[0]
    images, _ = test_set
    idx = int(row["idx"])
    image = images[idx].astype(np.float32) * np.float32(1.0 / 255.0)  # the documented uint8 -> [0, 1] conversion
    prediction, radius, samples = _rederive(settings, log.parent.parent, image, idx)
    assert prediction == int(row["predict"])
    assert f"{radius:.3}" == row["radius"]  # the log's format: the reference's {:.3}
    if samples is not None:
        assert samples == int(row["samples"])


RUNS = sorted(p for p in RESULTS.glob("*") if (p / "checkpoints").is_dir()) if RESULTS.is_dir() else []


@pytest.mark.skipif(not RUNS, reason="no committed results/cifar10 workdirs")
@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_committed_checkpoints_verify_and_are_the_ones_the_logs_were_made_from(run):
    # hashlib over the committed files (the oracle) against checksums.json, and the checksum in every log sidecar
    # that records one against the checkpoint it names.
    import hashlib

    from smoothjax import checkpointing

    for step_dir in (p for p in (run / "checkpoints").iterdir() if p.name.isdigit()):
        record = json.loads((step_dir / "checksums.json").read_text())
        files = {p.relative_to(step_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in step_dir.rglob("*") if p.is_file() and p.name != "checksums.json"}
        assert record["files"] == files, f"{step_dir}: checksums.json does not match its files"
        assert checkpointing.verify_checkpoint(step_dir) == (record["checksum"], True)
    for sidecar in (run / "certify").glob("*.tsv.json"):
        settings = json.loads(sidecar.read_text())
        if "checkpoint_checksum" in settings:
            step_dir = run / "checkpoints" / str(settings["checkpoint_step"])
            assert settings["checkpoint_checksum"] == json.loads((step_dir / "checksums.json").read_text())["checksum"]
