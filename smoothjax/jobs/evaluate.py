"""The job behind ``evaluate.py``: SIAM's accuracy grid of a trained run, under attack, written to files.

    python evaluate.py --config=configs/siam_cifar10.py:noise=cpni --workdir=runs/siam_c10_cpni \
        --config.evaluate.noise_sd=0.0,0.0625 --config.evaluate.m_test=1,8,64 \
        --config.evaluate.attacks=clean,pgd,epgd,transfer,nattack --config.evaluate.source_workdir=runs/siam_c10_pni

Settings are ``config.evaluate`` (defaults in ``smoothjax/jobs/defaults.py``): the grid (``noise_sd`` and ``m_test``,
comma
lists; ``noise_sd=''`` is the model's own input noise), the smoothing rule ``mode``, ``attacks`` (clean, pgd, epgd,
transfer from ``source_workdir``, nattack), the L-inf budget ``epsilon`` (pixel units), ``pgd_steps``, ``eot_passes``,
``nattack_population`` / ``nattack_iterations``, the first ``max_images`` images of ``split`` of ``config.dataset``,
``batch_size`` (a multiple of the device count), ``chunk_size`` (passes vmapped together, 0 = all), ``pass_loop``,
``seed`` and ``out`` (default ``<workdir>/robustness``). ``config.dtype`` (float32 | bfloat16 | float16) is the
models' compute dtype, as in training and certification (noise, attacks and parameters stay float32); when it is
not float32 every row records it (``"dtype"``). The grid itself is ``siam.evaluation``.

Writes ``results.json``, ``results.tsv``, ``results.md`` (a markdown table) and ``accuracy.png`` (accuracy against
m_test per noise_sd and against noise_sd per m_test) to ``out``, plus ``metrics.jsonl`` and a progress bar (or
periodic log lines off a terminal) over images x settings. Multi-host as training and certification
(``config.distributed``, ``smoothjax.parallel``): each process reads only its rows of every global batch, every
image is counted once, and process 0 writes the outputs (each file written whole, then renamed); one device, four
devices and two processes give identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from smoothjax import checkpointing, data, parallel
from smoothjax.checkpointing import write_atomically
from smoothjax.jobs.reporting import Reporter
from smoothjax.models import with_compute_dtype
from smoothjax.siam.evaluation import ATTACKS, evaluate_dataset


def _list(text: str, kind=float) -> list:
    try:
        return [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of {kind.__name__}s") from None


def evaluate_workdir(config, workdir: str) -> list:
    """Evaluates the newest checkpoint of ``workdir`` on the grid of ``config.evaluate``; returns the rows (one per
    (noise_sd, m_test), noise_sd-major: ``{"noise_sd", "m_test", "mode", "count", <attack>: accuracy}``) on every
    process and writes the outputs from process 0. Accuracies are fractions of the evaluated images (see
    ``siam.evaluation.evaluate_dataset`` for what each attack measures)."""
    ec = config.evaluate
    parallel.initialize_distributed(**config.distributed)
    dtype = config.get("dtype", "float32")
    model, variables = checkpointing.load_model(workdir)
    source = checkpointing.load_model(ec.source_workdir) if ec.source_workdir else None
    if dtype != "float32":  # the compute dtype; parameters, batch-norm statistics, noise and attacks stay float32
        model = with_compute_dtype(model, dtype)
        source = None if source is None else (with_compute_dtype(source[0], dtype), source[1])
    src = data.get_source(config.dataset, ec.split, data_dir=config.data_dir or None, path=config.data_path or None)
    count = len(src) if ec.max_images < 0 else min(len(src), ec.max_images)
    sds = _list(ec.noise_sd) or [getattr(model, "noise_sd", 0.0)]
    ms = _list(ec.m_test, int)
    attacks = _list(ec.attacks, str)
    out = Path(ec.out or Path(workdir) / "robustness")
    reporter = Reporter(out, total=count * len(sds) * len(ms), unit="image", description="robustness")
    rows = evaluate_dataset(model, variables, _First(src, count), noise_sds=sds, m_tests=ms, mode=ec.mode,
                            attacks=attacks, key=jax.random.key(ec.seed), epsilon=ec.epsilon, pgd_steps=ec.pgd_steps,
                            eot_passes=ec.eot_passes, source=source, batch_size=ec.batch_size,
                            chunk_size=ec.chunk_size or None, pass_loop=ec.pass_loop, reporter=reporter,
                            nattack_kwargs={"population": ec.nattack_population,
                                            "max_iterations": ec.nattack_iterations})
    if dtype != "float32":  # recorded only when set, as certify.py does: float32 results keep their columns
        rows = [{**row, "dtype": dtype} for row in rows]
    for row in rows:
        reporter.write(json.dumps(row))
    reporter.close()
    write_results(rows, out)
    return rows


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
