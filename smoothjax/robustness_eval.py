"""``smoothjax.robustness_eval``: SIAM's evaluation as imported before it became ``smoothjax.siam.evaluation``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax

from smoothjax import checkpointing, data, parallel
from smoothjax.atomic_files import write_atomically
from smoothjax.reporting import Reporter
from smoothjax.siam.evaluation import (ATTACKS, Programs, as_noise_sd, evaluate_dataset, evaluate_grid,
                                       evaluate_setting, noisy_apply_fn)


def write_results(rows: list, out_dir) -> None:
    """Writes results.json, results.tsv, results.md and accuracy.png (matplotlib, Agg) into ``out_dir``.

    Process 0 only (other processes return at once); each file is written to a temporary name and renamed into
    place, so a reader never sees a partial file."""
    if jax.process_index() != 0:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "results.json", json.dumps(rows, indent=1))
    cols = list(rows[0])
    tsv = "\n".join(["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]) + "\n"
    write_atomically(out / "results.tsv", tsv)
    fmt = lambda v: f"{100 * v:.1f}" if isinstance(v, float) and not isinstance(v, bool) else str(v)  # noqa: E731
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r[c]) if c in ATTACKS else str(r[c]) for c in cols) + " |" for r in rows]
    write_atomically(out / "results.md", "Accuracy (%) of the smoothed classifier.\n\n" + "\n".join(md) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in ATTACKS if a in rows[0]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for sd in sorted({str(r["noise_sd"]) for r in rows}):
        sel = sorted((r for r in rows if str(r["noise_sd"]) == sd), key=lambda r: r["m_test"])
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
    write_atomically(out / "accuracy.png", lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)


class _First(data.Source):
    """The first ``count`` items of ``src``, read only when a batch asks for them (each process its own rows)."""

    def __init__(self, src, count: int):
        self.src, self.count = src, count
        self.name, self.num_classes, self.image_shape = src.name, src.num_classes, src.image_shape
        self.in_memory = src.in_memory

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.src[self.check_index(index)]

    def get_batch(self, indices):
        return self.src.get_batch(indices)


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
    p.add_argument("--chunk_size", type=int, default=1, help="passes vmapped together (0 = all at once)")
    p.add_argument("--pass_loop", default="auto",
                   help="EPGD's passes: auto (scan on CPU) | vmap | scan (linf_attacks.expectation_loss)")
    p.add_argument("--nattack_population", type=int, default=300)
    p.add_argument("--nattack_iterations", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--coordinator_address", default="", help="multi-host: HOST:PORT of process 0's coordinator")
    p.add_argument("--num_processes", type=int, default=-1)
    p.add_argument("--process_id", type=int, default=-1)
    a = p.parse_args(argv)
    parallel.initialize_distributed(a.coordinator_address, a.num_processes, a.process_id)
    model, variables = checkpointing.load_model(a.workdir)
    spec = checkpointing.read_model_spec(a.workdir)
    source = checkpointing.load_model(a.source_workdir) if a.source_workdir else None
    src = data.get_source(a.dataset or spec.get("train_dataset", spec["dataset"]), a.split, path=a.data_path or None)
    count = len(src) if a.max_images < 0 else min(len(src), a.max_images)
    sds = _floats(a.noise_sd) or [getattr(model, "noise_sd", 0.0)]
    ms = [int(v) for v in _floats(a.m_test)]
    attacks = [s for s in a.attacks.split(",") if s]
    out = Path(a.out or Path(a.workdir) / "robustness")
    reporter = Reporter(out, total=count * len(sds) * len(ms), unit="image", description="robustness")
    rows = evaluate_dataset(model, variables, _First(src, count), noise_sds=sds, m_tests=ms, mode=a.mode,
                            attacks=attacks, key=jax.random.key(a.seed), epsilon=a.epsilon, pgd_steps=a.pgd_steps,
                            eot_passes=a.eot_passes, source=source, batch_size=a.batch_size,
                            chunk_size=a.chunk_size or None, pass_loop=a.pass_loop, reporter=reporter,
                            nattack_kwargs={"population": a.nattack_population,
                                            "max_iterations": a.nattack_iterations})
    for row in rows:
        reporter.write(json.dumps(row))
    reporter.close()
    write_results(rows, out)
    return rows


if __name__ == "__main__":
    main()


__all__ = ["ATTACKS", "Programs", "as_noise_sd", "evaluate_dataset", "evaluate_grid", "evaluate_setting", "main",
           "noisy_apply_fn", "write_results"]
