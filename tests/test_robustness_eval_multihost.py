"""Multi-host evaluation: the evaluate job (``evaluate.py``) as one process on one device and as two local
processes of 2 devices each (jax.distributed on 127.0.0.1, gloo; 4 devices in all) gives the same figures for every
setting and attack, and the two processes write one set of outputs. Before the command, each run attacks
test_nattack's noisy linear problem with NAttack from per-process rows of a global batch: same successes, queries and
adversarial images. Clean accuracy at noise 0 is checked against the plain model's predictions. This file is also
the child process (``__main__``)."""

import json
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, subprocess_env
from smoothjax import checkpointing, data
from smoothjax.models import get_model, make_apply_fn

IMAGES = 20  # 3 global batches of 8: the last has 4 padding rows (on 2 processes, all of process 1's rows)
SETTINGS = dict(max_images=20, batch_size=8, noise_sd="0.0,0.1", m_test="2", attacks="clean,pgd,epgd,transfer,nattack",
                epsilon=0.15, pgd_steps=2, eot_passes=2, nattack_population=8, nattack_iterations=3, seed=3)
OUTPUTS = {"results.json", "results.tsv", "results.md", "accuracy.png", "metrics.jsonl"}


def _save(path, params) -> None:
    checkpointing.write_model_spec(path, {"model": "small_cnn", "num_classes": 10, "dataset": "digits",
                                          "normalization": "mean_std", "model_kwargs": {}, "image_shape": [8, 8, 1],
                                          "sigma": 0.1, "train_dataset": "digits"})
    ckpt = checkpointing.Checkpointer(path)
    ckpt.save(1, {"params": params})
    ckpt.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of a small_cnn fitted by full-batch Adam to 400 digits training images: ``run`` (40 steps) and, as
    the transfer attack's source, ``source`` (its state after 20 steps)."""
    root = tmp_path_factory.mktemp("multihost")
    model = get_model("small_cnn", 10, dataset="digits")
    x, y = data.load_examples(data.get_source("digits", "train"), np.arange(400))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            model.apply({"params": p}, x), y).mean()
        updates, opt = tx.update(jax.grad(loss)(params), opt)
        return optax.apply_updates(params, updates), opt

    opt = tx.init(params)
    for i in range(40):
        params, opt = step(params, opt)
        if i == 19:
            _save(root / "source", params)
    _save(root / "run", params)
    return root, model, {"params": params}


def _worker(root, out, *distributed) -> list:
    return [sys.executable, __file__, str(root), str(out), *distributed]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(out) -> set:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "tensorboard" not in p.parts}


def test_two_processes_of_two_devices_give_the_figures_of_one_device(runs):
    """Each run (a child process, or a pair) evaluates the grid with the command and, first, NAttack on the noisy
    linear problem of test_nattack (a batch assembled from per-process rows, some broken, some not)."""
    root, model, variables = runs
    one, two = root / "one", root / "two"
    port = _free_port()
    procs = [subprocess.Popen(_worker(root, two, f"127.0.0.1:{port}", "2", str(i)), env=subprocess_env(2), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    proc = subprocess.run(_worker(root, one), env=subprocess_env(1), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    attacked = {"one": json.loads(proc.stdout.strip().splitlines()[-1])}
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    attacked["two"] = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert "{" not in outputs[1][0]  # process 1 prints no result: it reports through process 0

    assert [attacked[k][f] for k in ("one", "two") for f in ("processes", "devices")] == [1, 1, 2, 4]
    assert 0 < sum(attacked["one"]["success"][:6]) < 6 and attacked["one"]["success"][6:] == [False, False]
    for field in ("success", "queries", "iterations"):
        assert attacked["two"][field] == attacked["one"][field], field
    np.testing.assert_allclose(attacked["two"]["adversarial"], attacked["one"]["adversarial"], atol=1e-6)

    rows = json.loads((one / "results.json").read_text())
    assert len(rows) == 2 and all(r["count"] == IMAGES for r in rows)
    assert json.loads((two / "results.json").read_text()) == rows  # every figure, exactly
    for name in ("results.tsv", "results.md"):
        assert (two / name).read_text() == (one / name).read_text()
    # One set of outputs from two processes: the same files as one process, no temporary leftovers, and
    # metrics.jsonl written once.
    assert _files(one) == _files(two) == OUTPUTS
    assert (two / "metrics.jsonl").read_text() == (one / "metrics.jsonl").read_text()
    # Independent oracle: at noise 0 the smoothed classifier is the model itself, whatever m_test.
    x, y = data.load_examples(data.get_source("digits", "test"), np.arange(IMAGES))
    plain = float(np.mean(np.argmax(np.asarray(make_apply_fn(model)(variables, jnp.asarray(x))), -1) == y))
    assert rows[0]["clean"] == pytest.approx(plain) and plain > 0.5
    # The white-box and transfer attacks break some images (a figure that cannot move would make the equality
    # above vacuous); NAttack's grid figure is compared too, but its search rarely moves saturated digit pixels.
    assert all(r[a] < r["clean"] for r in rows for a in ("pgd", "epgd", "transfer"))


def _run_worker(root, out, coordinator="", num_processes="-1", process_id="-1") -> None:
    """Child process: NAttack on test_nattack's noisy linear problem from per-process rows, then the command."""
    from test_nattack import _devices_problem, _noisy_linear_score

    from configs import digits
    from smoothjax import parallel
    from smoothjax.jobs.evaluate import evaluate_workdir
    from smoothjax.siam.nattack import nattack

    parallel.initialize_distributed(coordinator, int(num_processes), int(process_id))
    w, x, y = _devices_problem()
    count, index = jax.process_count(), jax.process_index()
    mine = slice(index * 8 // count, (index + 1) * 8 // count)
    batch = parallel.to_global({"x": x[mine], "y": y[mine], "active": (np.arange(8) < 6)[mine]}, parallel.make_mesh())
    out_attack = nattack(_noisy_linear_score, batch["x"], batch["y"], jax.random.key(3), epsilon=0.17, population=40,
                         max_iterations=25, score_args=(jnp.asarray(w), jax.random.key(9)), active=batch["active"])
    config = digits.get_config()
    config.evaluate.update(source_workdir=f"{root}/source", out=str(out), **SETTINGS)
    config.distributed.update(coordinator_address=coordinator, num_processes=int(num_processes),
                              process_id=int(process_id))
    evaluate_workdir(config, f"{root}/run")
    if index == 0:
        print(json.dumps({"processes": count, "devices": jax.device_count(),
                          "success": out_attack["success"].tolist(), "queries": out_attack["queries"].tolist(),
                          "iterations": out_attack["iterations"], "adversarial": out_attack["adversarial"].tolist()}))


if __name__ == "__main__":
    _run_worker(*sys.argv[1:])
