"""SIAM's evaluation grid: one compilation per function serves a whole noise_sd sweep (counted with JAX's own lowering
events), accuracies match independent re-computations where they are known in closed form, and the command writes
JSON / TSV / markdown / plot / metrics files."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, subprocess_env
from smoothjax.models import get_model, make_apply_fn
from smoothjax.siam import evaluation as R

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # one per compiled executable, cached or not


@pytest.fixture(scope="module")
def small():
    model = get_model("small_cnn", 4, dataset="digits")
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(12, 8, 8, 1)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    labels = np.argmax(np.asarray(make_apply_fn(model)(variables, images)), -1).astype(np.int32)
    labels[::3] = (labels[::3] + 1) % 4  # a third misclassified: accuracy 8/12 at noise 0
    return model, variables, images, labels


class _Lowerings:
    def __init__(self):
        self.count, self.on = 0, False
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, event, duration, **kw):
        if self.on and event == LOWERING_EVENT:
            self.count += 1

    def run(self, fn):
        self.count, self.on = 0, True
        try:
            out = fn()
        finally:
            self.on = False
        return out, self.count


def test_one_compilation_serves_the_noise_sweep(small):
    """With fresh Programs, evaluating 2 or 4 noise levels lowers the same executables: one predict per m_test and
    one PGD craft; one more m_test adds exactly one. (Compiling per setting, as before, would give 2 * 2 + 2 and
    4 * 2 + 4.)"""
    model, variables, images, labels = small
    counter = _Lowerings()
    kw = dict(mode="vote", attacks=["clean", "pgd"], key=jax.random.key(1), epsilon=0.05, pgd_steps=2,
              batch_size=6)

    def grid(sds, ms):
        programs = R.Programs(model, mode="vote", epsilon=0.05, pgd_steps=2, eot_passes=2, source=None,
                              chunk_size=1)
        rows = R.evaluate_grid(model, variables, images, labels, noise_sds=sds, m_tests=ms, programs=programs, **kw)
        return rows, programs.compiles

    grid([0.0, 0.1], [1, 2])  # warms JAX's eager-op caches (key splitting, device_put)
    (rows, traced), lowered = counter.run(lambda: grid([0.0, 0.1, 0.2, 0.3], [1, 2]))
    assert (traced, lowered) == (3, 3)
    (_, traced), lowered = counter.run(lambda: grid([0.05, (0.1,)], [1, 2, 4]))
    assert (traced, lowered) == (4, 4)
    assert [(r["noise_sd"], r["m_test"]) for r in rows] == [(sd, m) for sd in (0.0, 0.1, 0.2, 0.3) for m in (1, 2)]
    # Independent oracle: without noise the smoothed classifier is the model itself, whatever m.
    for r in rows[:2]:
        assert r["clean"] == pytest.approx(8 / 12)
    assert all(r["pgd"] <= r["clean"] for r in rows[:2])
    # Noise changes the classifier: at sd 0.3 on [0, 1] pixels some prediction must move.
    assert any(r["clean"] != pytest.approx(8 / 12) for r in rows[2:])


def test_zero_budget_attacks_change_nothing_and_nattack_agrees(small):
    """epsilon = 0: PGD, EPGD and NAttack leave every image as it is, so their accuracies equal the clean one at every
    setting (with noise on, the same keys give the same predictions)."""
    model, variables, images, labels = small
    rows = R.evaluate_grid(model, variables, images, labels, noise_sds=[0.0, 0.2], m_tests=[1, 3], mode="vote",
                           attacks=["clean", "pgd", "epgd", "nattack"], key=jax.random.key(2), epsilon=0.0,
                           pgd_steps=2, eot_passes=2, batch_size=8, nattack_kwargs={"population": 8,
                                                                                     "max_iterations": 2})
    for r in rows:
        assert r["pgd"] == r["clean"] and r["epgd"] == r["clean"] and r["nattack"] == r["clean"], r
    assert rows[0]["clean"] == pytest.approx(8 / 12)


def test_bad_noise_sd_and_attack_names(small):
    with pytest.raises(ValueError, match="noise_sd=-0.1"):
        R.as_noise_sd(-0.1, 3)
    with pytest.raises(ValueError, match="noise_sd=\\(0.1, 0.2\\)"):
        R.as_noise_sd((0.1, 0.2), 3)
    np.testing.assert_array_equal(R.as_noise_sd(0.5, 3), np.full(3, 0.5, np.float32))
    model, variables, images, labels = small
    with pytest.raises(ValueError, match="unknown attacks"):
        R.evaluate_grid(model, variables, images, labels, noise_sds=[0.0], m_tests=[1], mode="vote",
                        attacks=["fgsm"], key=jax.random.key(0))


def test_command_writes_every_output(trained, tmp_path):
    """``evaluate.py`` on the session's trained digits run: rows for the whole grid in JSON, TSV and markdown, a plot,
    metrics.jsonl; clean accuracy at noise 0 equals the plain model's on the same images."""
    from smoothjax import checkpointing, data

    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "evaluate.py", "--config=configs/digits.py", f"--workdir={trained}",
                           *(f"--config.evaluate.{k}={v}" for k, v in dict(
                               max_images=16, batch_size=8, noise_sd="0.0,0.1", m_test="1,2",
                               attacks="clean,pgd,nattack", epsilon=0.02, pgd_steps=2, nattack_population=6,
                               nattack_iterations=2, out=out).items())],
                          cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"4 settings of 16 images each; accuracies in {out}" in proc.stdout
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4
    tsv = (out / "results.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["noise_sd", "m_test", "mode", "count", "clean", "pgd", "nattack"] and len(tsv) == 5
    md = (out / "results.md").read_text()
    assert "| noise_sd | m_test |" in md and md.count("\n| ") == 5
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "metrics.jsonl").exists()
    model, variables = checkpointing.load_model(trained)
    spec = checkpointing.read_model_spec(trained)
    images, labels = data.load_examples(data.get_source(spec.get("train_dataset", spec["dataset"]), "test"),
                                        np.arange(16))
    plain = np.mean(np.argmax(np.asarray(make_apply_fn(model)(variables, jnp.asarray(images))), -1) == labels)
    assert rows[0]["clean"] == rows[1]["clean"] == pytest.approx(plain)
    for r in rows:
        assert 0 <= r["nattack"] <= r["clean"] and 0 <= r["pgd"] <= r["clean"] + 1 / 16


def test_config_dtype_is_the_compute_dtype_and_is_recorded(trained, tmp_path):
    """``config.dtype=bfloat16`` evaluates the model computing in bfloat16 (clean accuracy at noise 0 and m = 1 is
    the bfloat16 model's own, re-computed here) and every row says so; float32 rows have no dtype column (the
    committed results keep their columns); a dtype that is not allowed is a one-line error before any output."""
    from configs import digits
    from smoothjax import checkpointing, data
    from smoothjax.jobs.evaluate import evaluate_workdir
    from smoothjax.models import with_compute_dtype

    config = digits.get_config()
    config.evaluate.update(max_images=16, batch_size=8, noise_sd="0.0", m_test="1", attacks="clean",
                           out=str(tmp_path / "bf16"))
    config.dtype = "bfloat16"
    rows = evaluate_workdir(config, trained)
    assert [r["dtype"] for r in rows] == ["bfloat16"]
    assert (tmp_path / "bf16" / "results.tsv").read_text().splitlines()[0].split("\t")[-1] == "dtype"
    model, variables = checkpointing.load_model(trained)
    spec = checkpointing.read_model_spec(trained)
    images, labels = data.load_examples(data.get_source(spec.get("train_dataset", spec["dataset"]), "test"),
                                        np.arange(16))
    logits = make_apply_fn(with_compute_dtype(model, "bfloat16"))(variables, jnp.asarray(images))
    assert rows[0]["clean"] == pytest.approx(np.mean(np.argmax(np.asarray(logits), -1) == labels))
    config.dtype, config.evaluate.out = "float32", str(tmp_path / "f32")
    assert "dtype" not in evaluate_workdir(config, trained)[0]
    config.dtype, config.evaluate.out = "int8", str(tmp_path / "bad")
    with pytest.raises(ValueError, match="dtype='int8' is not allowed; choose one of: float32, bfloat16, float16"):
        evaluate_workdir(config, trained)
    assert not (tmp_path / "bad").exists()
