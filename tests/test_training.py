"""Training: optimizer and loss against closed forms, equality across device counts, and train.py end to end
(kill -9 and resume bit for bit, two processes equal one, one-line errors that leave nothing behind)."""

import json
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, subprocess_env
from smoothjax import checkpointing, training
from smoothjax.models import get_model


def test_step_schedule_and_coupled_weight_decay_closed_form():
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=10, momentum=0.9, weight_decay=1e-4)
    params = {"w": jnp.full((3,), 2.0)}
    state = tx.init(params)
    # Zero loss gradient: the update is -lr * wd * w (PyTorch SGD adds wd * w to the gradient before momentum).
    updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
    np.testing.assert_allclose(updates["w"], -0.1 * 1e-4 * 2.0, rtol=1e-6)
    # Second step with zero gradient: momentum 0.9 carries the first update over.
    updates2, _ = tx.update({"w": jnp.zeros(3)}, state, params)
    np.testing.assert_allclose(updates2["w"], -0.1 * 1e-4 * 2.0 * 1.9, rtol=1e-5)


def test_step_schedule_divides_by_ten_every_thirty_epochs():
    schedule = training.learning_rate_schedule(learning_rate=0.1, steps_per_epoch=10)
    for step, lr in [(0, 0.1), (299, 0.1), (300, 0.01), (599, 0.01), (600, 0.001), (899, 0.001)]:
        np.testing.assert_allclose(schedule(step), lr, rtol=1e-6, err_msg=str(step))
    cosine = training.learning_rate_schedule(learning_rate=0.1, steps_per_epoch=10, lr_schedule="cosine",
                                             total_steps=100)
    np.testing.assert_allclose([cosine(0), cosine(50), cosine(100)], [0.1, 0.05, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        training.learning_rate_schedule(learning_rate=0.1, steps_per_epoch=1, lr_schedule="linear")


def test_gaussian_loss_at_sigma_zero_is_cross_entropy():
    model = get_model("small_cnn", 10)
    x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    y = jnp.arange(6) % 10
    variables = model.init(jax.random.key(1), x)
    loss, (_, metrics) = training.gaussian_augmentation_loss(model, 0.0)(variables["params"], {}, {"image": x,
                                                                                                  "label": y}, jax.random.key(0))
    logits = np.asarray(model.apply(variables, x), np.float64)
    expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(6), np.asarray(y)])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(logits.argmax(1) == np.asarray(y)))


def test_gaussian_loss_draws_fresh_noise_per_key():
    model = get_model("small_cnn", 10)
    x = jnp.full((4, 8, 8, 1), 0.5)
    params = model.init(jax.random.key(1), x)["params"]
    loss_fn = training.gaussian_augmentation_loss(model, 0.5)
    batch = {"image": x, "label": jnp.zeros(4, jnp.int32)}
    a, b = (loss_fn(params, {}, batch, jax.random.key(k))[0] for k in (0, 1))
    assert a != b and loss_fn(params, {}, batch, jax.random.key(0))[0] == a


def _run_worker(args, devices, tmp_path):
    out = tmp_path / f"out{devices}.npz"
    subprocess.run([sys.executable, str(ROOT / "tests" / "_train_worker.py"), *args, str(out)], check=True,
                   env=subprocess_env(devices), cwd=ROOT, timeout=600)
    return dict(np.load(out))


@pytest.mark.slow
def test_same_global_batch_on_one_and_four_devices(tmp_path):
    one, four = _run_worker(["devices"], 1, tmp_path), _run_worker(["devices"], 4, tmp_path)
    assert one.pop("devices") == 1 and four.pop("devices") == 4
    assert one.keys() == four.keys() and any("batch_stats" in k for k in one)
    for k in one:  # BatchNorm statistics are over the global batch, so per-device statistics would fail this.
        np.testing.assert_allclose(one[k], four[k], rtol=2e-4, atol=2e-5, err_msg=k)


def _train_cmd(workdir, *overrides):
    return [sys.executable, "train.py", "--config=configs/digits.py", f"--workdir={workdir}",
            "--config.total_steps=30", "--config.checkpoint_every_steps=5", "--config.log_every_steps=5",
            "--config.eval_split=", *overrides]


def _params(workdir):
    return {jax.tree_util.keystr(p): v for p, v in
            jax.tree_util.tree_leaves_with_path(checkpointing.load_variables(workdir))}


@pytest.mark.slow
def test_kill9_and_resume_is_bitwise_identical(tmp_path):
    env = subprocess_env(1)
    subprocess.run(_train_cmd(tmp_path / "straight"), check=True, env=env, cwd=ROOT, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed), env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "10").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) < 30, steps  # really killed mid-run
    for step in steps:  # killed around checkpoint 10's checksums: never a checkpoint that counts as damaged
        checkpointing.verify_checkpoint(killed / "checkpoints" / str(step))
    resumed = subprocess.run(_train_cmd(killed), env=env, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stderr
    a, b = _params(tmp_path / "straight"), _params(killed)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    resumed_records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed_records] == [5, 10, 15, 20, 25, 30]  # each step once after the resume
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in records)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    port = 20000 + (int(time.time() * 1000) % 20000)
    single = tmp_path / "single"
    subprocess.run(_train_cmd(single, "--config.total_steps=10"), check=True, env=subprocess_env(2), cwd=ROOT,
                   timeout=600)
    multi = tmp_path / "multi"
    procs = [subprocess.Popen(_train_cmd(multi, "--config.total_steps=10",
                                         f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                                         "--config.distributed.num_processes=2",
                                         f"--config.distributed.process_id={i}"),
                              env=subprocess_env(1), cwd=ROOT) for i in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    a, b = _params(single), _params(multi)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("override,message", [
    ("--config.model=resnet18", "unknown model 'resnet18'; choose one of:"),
    ("--config.dataset=mnist", "unknown dataset 'mnist'; choose one of:"),
    ("--config.sigma=-0.5", "sigma=-0.5"),
    ("--config.batch_size=30", "batch_size=30 is not allowed on 4 devices"),
])
def test_bad_input_one_line_error_and_nothing_written(tmp_path, override, message):
    workdir = tmp_path / "run"
    r = subprocess.run(_train_cmd(workdir, override), env=subprocess_env(4), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error:") and message in last and "Traceback" not in r.stderr
    assert not workdir.exists()


def test_load_model_gives_a_working_classifier(tmp_path):
    from smoothjax import data
    from smoothjax.models import make_apply_fn

    subprocess.run(_train_cmd(tmp_path / "run", "--config.total_steps=150"), check=True, env=subprocess_env(1),
                   cwd=ROOT, timeout=600)
    model, variables = checkpointing.load_model(tmp_path / "run")
    images, labels = data.get_source("digits", "test").get_batch(np.arange(360))
    accuracy = np.mean(np.argmax(make_apply_fn(model)(variables, images), -1) == labels)
    assert accuracy > 0.85  # ten classes: chance is 0.1; 150 noisy steps already separate the digits


def test_missing_or_corrupt_data_file(tmp_path):
    from smoothjax.jobs.train import train_and_evaluate
    from configs import digits

    bad = tmp_path / "not-a-zip.zip"
    bad.write_bytes(b"garbage")
    for path in (bad, tmp_path / "missing.zip"):
        config = digits.get_config()
        config.dataset, config.data_path = "image_folder", str(path)
        with pytest.raises(ValueError, match=str(path.name)) as e:
            train_and_evaluate(config, str(tmp_path / "run"))
        assert "\n" not in str(e.value)
        assert not (tmp_path / "run").exists()


def test_workdir_of_another_model_is_refused_untouched(tmp_path):
    from smoothjax.jobs.train import train_and_evaluate
    from configs import digits

    workdir = tmp_path / "run"
    spec = {"model": "cifar_resnet20", "num_classes": 10, "dataset": "cifar10", "normalization": "mean_std",
            "model_kwargs": {}, "image_shape": [32, 32, 3]}
    checkpointing.write_model_spec(workdir, spec)
    before = (workdir / "model.json").read_text()
    with pytest.raises(ValueError, match="holds checkpoints of another model"):
        train_and_evaluate(digits.get_config(), str(workdir))
    assert (workdir / "model.json").read_text() == before and sorted(p.name for p in workdir.iterdir()) == [
        "model.json"]
