"""SIAM's evaluation grid: clean, white-box PGD / EPGD, transfer and NAttack accuracy of smoothed classifiers.

    python -m smoothjax.robustness_eval --workdir runs/siam_pni --source_workdir runs/siam_pni_seed1 \\
        --noise_sd 0.0,0.0625 --m_test 1,8,64 --attacks clean,pgd,epgd,transfer,nattack --max_images 1000 \\
        --out runs/siam_pni/robustness

For every (noise_sd, m_test) setting the trained model is re-instantiated with that input-noise level (same
variables) and predicts with ``smoothing.smoothed_predict`` (``--mode``). Attacks, all L-inf with budget
``--epsilon`` in pixel units (default 8/255):

* ``pgd``: white-box PGD (``--pgd_steps`` steps of eps/4, random start) on the single-pass objective (one
  stochastic pass per step, the reference's ``run_attack.py``);
* ``epgd``: the EOT objective (gradient averaged over ``--eot_passes`` passes per step);
* ``transfer``: PGD crafted on the model of ``--source_workdir`` (its own noise settings), evaluated here;
* ``nattack``: black-box NAttack on the smoothed classifier's normalised scores (``smoothjax.nattack``).

Writes ``results.json``, ``results.tsv``, ``results.md`` (a markdown table) and ``accuracy.png`` (accuracy against
m_test per noise_sd and against noise_sd per m_test) to ``--out``. Batches are sharded over all devices
(data-parallel, as training); every long loop reports progress.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import checkpointing, data, parallel
from smoothjax.linf_attacks import pgd_linf
from smoothjax.models import make_stochastic_apply_fn
from smoothjax.nattack import nattack
from smoothjax.reporting import Reporter
from smoothjax.smoothing import check_mode, smoothed_scores

ATTACKS = ("clean", "pgd", "epgd", "transfer", "nattack")


def _with_noise(model, noise_sd):
    return model.clone(noise_sd=noise_sd) if hasattr(model, "noise_sd") else model


def _probabilities(scores, mode):
    """Smoothed scores as probabilities for NAttack: softmax of logits, normalised counts / rank weights."""
    if mode in ("mean_logits", "single"):
        return jax.nn.softmax(scores, -1)
    return scores / jnp.sum(scores, -1, keepdims=True)


def evaluate_setting(model, variables, images, labels, *, noise_sd, m_test: int, mode: str, attacks, key,
                     epsilon=8 / 255, pgd_steps: int = 7, eot_passes: int = 8, source=None, batch_size: int = 100,
                     chunk_size: int | None = None, nattack_kwargs=None, reporter=None) -> dict:
    """Accuracy (fraction of ``images``) of the smoothed ``model`` at (noise_sd, m_test) under each attack.

    ``images`` (N, H, W, C) in [0, 1] NumPy, ``labels`` (N,); ``source`` = (model, variables) for ``transfer``.
    Returns ``{"noise_sd", "m_test", "mode", "count", <attack>: accuracy}``.
    """
    check_mode(mode)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; choose from: {', '.join(ATTACKS)}")
    if "transfer" in attacks and source is None:
        raise ValueError("attack 'transfer' needs a source model (--source_workdir)")
    mesh = parallel.make_mesh()
    repl, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    parallel.check_batch_size(batch_size, mesh)
    apply_fn = make_stochastic_apply_fn(_with_noise(model, noise_sd))
    variables = jax.device_put(variables, repl)
    predict = jax.jit(lambda v, x, k: jnp.argmax(
        smoothed_scores(k, apply_fn, v, x, num_samples=m_test, mode=mode, chunk_size=chunk_size), -1))
    crafts = {"pgd": jax.jit(lambda v, x, y, k: pgd_linf(apply_fn, v, x, y, k, epsilon=epsilon, num_steps=pgd_steps)),
              "epgd": jax.jit(lambda v, x, y, k: pgd_linf(apply_fn, v, x, y, k, epsilon=epsilon, num_steps=pgd_steps,
                                                          num_passes=eot_passes))}
    if source is not None:
        src_apply = make_stochastic_apply_fn(source[0])
        src_vars = jax.device_put(source[1], repl)
        crafts["transfer"] = jax.jit(lambda v, x, y, k: pgd_linf(src_apply, src_vars, x, y, k, epsilon=epsilon,
                                                                 num_steps=pgd_steps))
    correct = {a: 0 for a in attacks}
    n = len(labels)
    for start in range(0, n, batch_size):
        x = np.zeros((batch_size,) + images.shape[1:], np.float32)
        y = np.zeros((batch_size,), np.int32)
        rows = min(batch_size, n - start)
        x[:rows], y[:rows] = images[start:start + rows], labels[start:start + rows]
        gx, gy = jax.device_put(x, shard), jax.device_put(y, shard)
        bkey = jax.random.fold_in(key, start)
        for i, attack in enumerate(attacks):
            akey, pkey = jax.random.split(jax.random.fold_in(bkey, i))
            if attack == "nattack":
                score = lambda im: _probabilities(smoothed_scores(pkey, apply_fn, variables, im,  # noqa: E731
                                                                  num_samples=m_test, mode=mode,
                                                                  chunk_size=chunk_size), mode)
                out = nattack(score, gx[:rows], gy[:rows], akey, epsilon=epsilon, **(nattack_kwargs or {}))
                correct[attack] += int(np.sum(~out["success"]))
                continue
            xa = gx if attack == "clean" else crafts[attack](variables, gx, gy, akey)
            pred = np.asarray(predict(variables, xa, pkey))
            correct[attack] += int(np.sum(pred[:rows] == y[:rows]))
        if reporter is not None:
            reporter.advance(rows)
    return {"noise_sd": noise_sd, "m_test": m_test, "mode": mode, "count": n,
            **{a: correct[a] / max(n, 1) for a in attacks}}


def write_results(rows: list, out_dir) -> None:
    """Writes results.json, results.tsv, results.md and accuracy.png (matplotlib, Agg) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    cols = list(rows[0])
    (out / "results.tsv").write_text("\n".join(["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols)
                                                                     for r in rows]) + "\n")
    fmt = lambda v: f"{100 * v:.1f}" if isinstance(v, float) and not isinstance(v, bool) else str(v)  # noqa: E731
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r[c]) if c in ATTACKS else str(r[c]) for c in cols) + " |" for r in rows]
    (out / "results.md").write_text("Accuracy (%) of the smoothed classifier.\n\n" + "\n".join(md) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in ATTACKS if a in rows[0]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for sd in sorted({r["noise_sd"] for r in rows}, key=str):
        sel = sorted((r for r in rows if r["noise_sd"] == sd), key=lambda r: r["m_test"])
        for a in attacks:
            axes[0].plot([r["m_test"] for r in sel], [r[a] for r in sel], marker="o", label=f"{a}, sd={sd}")
    for m in sorted({r["m_test"] for r in rows}):
        sel = [r for r in rows if r["m_test"] == m]
        for a in attacks:
            axes[1].plot([str(r["noise_sd"]) for r in sel], [r[a] for r in sel], marker="o", label=f"{a}, m={m}")
    axes[0].set(xscale="log", xlabel="m_test", ylabel="accuracy")
    axes[1].set(xlabel="noise_sd (pixel units)", ylabel="accuracy")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)


def _floats(s):
    return [float(v) for v in s.split(",") if v]


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--source_workdir", default="")
    p.add_argument("--dataset", default="", help="data source (default: the run's training dataset)")
    p.add_argument("--data_path", default="")
    p.add_argument("--split", default="test")
    p.add_argument("--max_images", type=int, default=1000)
    p.add_argument("--noise_sd", default="", help="comma list in pixel units (default: the trained value)")
    p.add_argument("--m_test", default="1,8")
    p.add_argument("--mode", default="vote")
    p.add_argument("--attacks", default="clean,pgd,epgd")
    p.add_argument("--epsilon", type=float, default=8 / 255)
    p.add_argument("--pgd_steps", type=int, default=7)
    p.add_argument("--eot_passes", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--chunk_size", type=int, default=0)
    p.add_argument("--nattack_population", type=int, default=300)
    p.add_argument("--nattack_iterations", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    model, variables = checkpointing.load_model(a.workdir)
    spec = checkpointing.read_model_spec(a.workdir)
    source = checkpointing.load_model(a.source_workdir) if a.source_workdir else None
    src = data.get_source(a.dataset or spec.get("train_dataset", spec["dataset"]), a.split, path=a.data_path or None)
    count = len(src) if a.max_images < 0 else min(len(src), a.max_images)
    images, labels = data.load_examples(src, np.arange(count))
    sds = _floats(a.noise_sd) or [getattr(model, "noise_sd", 0.0)]
    ms = [int(v) for v in _floats(a.m_test)]
    attacks = [s for s in a.attacks.split(",") if s]
    out = Path(a.out or Path(a.workdir) / "robustness")
    reporter = Reporter(out, total=count * len(sds) * len(ms), unit="image", description="robustness")
    rows = []
    for sd in sds:
        for m in ms:
            rows.append(evaluate_setting(model, variables, images, labels, noise_sd=sd, m_test=m, mode=a.mode,
                                         attacks=attacks, key=jax.random.key(a.seed), epsilon=a.epsilon,
                                         pgd_steps=a.pgd_steps, eot_passes=a.eot_passes, source=source,
                                         batch_size=a.batch_size, chunk_size=a.chunk_size or None,
                                         nattack_kwargs={"population": a.nattack_population,
                                                         "max_iterations": a.nattack_iterations},
                                         reporter=reporter))
            reporter.write(json.dumps(rows[-1]))
    reporter.close()
    write_results(rows, out)
    return rows


if __name__ == "__main__":
    main()
