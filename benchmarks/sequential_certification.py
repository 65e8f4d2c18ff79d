"""Sequential certification vs CERTIFY: forward passes per image, wall time and certified accuracy on the grid.

Run from the repository root (a few minutes on 2 cores; trains a digits model first unless --workdir is given)::

    python benchmarks/sequential_certification.py
    python benchmarks/sequential_certification.py --workdir=runs/digits --num-images 60 --skip 6

What it does, on the digits model (``configs/digits.py``, sigma 0.25; trained for --train-steps steps with
``train.py`` into a temporary directory when --workdir is not given) and every --skip-th test image (--num-images):

* CERTIFY (``certification.certify``): n0 = 100, n = 100,000, alpha = 0.001, batch 1000: n0 + n forward passes.
* ``certify_sequential``: n0 = 100, at most 100,000 estimation draws, alpha = 0.001, looked at every
  --seq-batch-size draws, on the grid {0, 0.25, ..., 3 sigma} (``certify_modes.resolve_radii('')``), with the betting
  confidence sequence (and --methods union).

Both are jitted for one image (compile excluded: one warm-up image first), image ``i`` with key
``fold_in(key(0), i)``, so each image stops on its own (no batch waits for its slowest image). Reported: total and
per-image (mean / median) forward passes, seconds per image, certified accuracy at every grid radius for both, and
where the savings come from (samples by the largest grid radius certified, and how many images spent the whole
budget). The hard limit: no method certifies beyond sigma * Phi^-1(alpha^(1/n)) (3.81 sigma at n = 1e5), and radii
near it need ~n draws; the grid stops at 3 sigma. Results go to ``benchmarks/results/sequential_certification.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from smoothjax import certification, certify_modes, checkpointing, data  # noqa: E402
from smoothjax.models import make_apply_fn  # noqa: E402
from smoothjax.sequential import certify_sequential  # noqa: E402
from train_throughput import machine_info  # noqa: E402

SIGMA, N0, N, ALPHA = 0.25, 100, 100_000, 0.001


def train(workdir: Path, steps: int) -> None:
    """Trains the digits model with train.py (``--config.total_steps=steps``) into ``workdir``."""
    cmd = [sys.executable, "train.py", "--config=configs/digits.py", f"--workdir={workdir}",
           f"--config.total_steps={steps}", "--config.eval_split="]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)


def timed(fn, keys, images) -> tuple[list, list]:
    """Runs ``fn(key, x)`` on each image (after one warm-up call); returns (results, seconds per image)."""
    jax.block_until_ready(fn(keys[0], images[0]))
    results, seconds = [], []
    for key, x in zip(keys, images):
        t0 = time.perf_counter()
        results.append(jax.device_get(jax.block_until_ready(fn(key, x))))
        seconds.append(time.perf_counter() - t0)
    return results, seconds


def summarise(name, predictions, radii, samples, seconds, labels, grid) -> dict:
    correct = (np.asarray(predictions) == labels) & (np.asarray(predictions) != -1)
    accuracy = [float(np.mean(correct & (np.asarray(radii) >= r))) for r in grid]
    samples = np.asarray(samples, np.int64)
    return {"method": name, "total_forward_passes": int(samples.sum()), "mean_samples": float(samples.mean()),
            "median_samples": float(np.median(samples)), "seconds_total": float(np.sum(seconds)),
            "seconds_per_image": float(np.mean(seconds)), "certified_accuracy": accuracy,
            "samples": samples.tolist(), "radius": [float(r) for r in radii],
            "prediction": [int(p) for p in predictions]}


def savings(result, grid, max_samples) -> dict:
    """Mean samples by the largest grid radius certified (-1 = abstain) and the count that spent the budget."""
    radius, samples = np.asarray(result["radius"]), np.asarray(result["samples"])
    level = np.where(np.asarray(result["prediction"]) == -1, -1,
                     np.searchsorted(np.asarray(grid), radius, side="right") - 1)
    groups = {}
    for g in sorted(set(level.tolist())):
        key = "abstain" if g == -1 else f"r>={grid[g]:g}"
        groups[key] = {"images": int(np.sum(level == g)), "mean_samples": float(samples[level == g].mean())}
    return {"by_largest_certified_grid_radius": groups,
            "images_at_max_samples": int(np.sum(samples >= N0 + max_samples))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="trained digits run (default: train one into a temporary directory)")
    parser.add_argument("--train-steps", type=int, default=660, help="steps when training (660 = the full job)")
    parser.add_argument("--num-images", type=int, default=24)
    parser.add_argument("--skip", type=int, default=15, help="every skip-th test image")
    parser.add_argument("--seq-batch-size", type=int, default=250, help="draws between looks at the sequence")
    parser.add_argument("--methods", default="betting", help="comma list of betting, union")
    parser.add_argument("--out", default=str(HERE / "results" / "sequential_certification.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp) / "digits"
        if not args.workdir:
            print(f"training the digits model ({args.train_steps} steps) ...", flush=True)
            train(workdir, args.train_steps)
        model, variables = checkpointing.load_model(workdir)
    apply_fn = make_apply_fn(model)
    indices = np.arange(args.num_images) * args.skip
    images, labels = data.get_source("digits", "test").get_batch(indices)
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    keys = [jax.random.fold_in(jax.random.key(0), int(i)) for i in indices]
    grid = certify_modes.resolve_radii("", SIGMA)
    common = dict(apply_fn=apply_fn, sigma=SIGMA, alpha=ALPHA, num_classes=10)

    cert_fn = jax.jit(lambda k, x: certification.certify(k, variables=variables, x=x, n0=N0, n=N, batch_size=1000,
                                                         **common))
    certs, seconds = timed(cert_fn, keys, images)
    results = [summarise("certify", [c.prediction for c in certs], [c.radius for c in certs],
                         [N0 + N] * len(certs), seconds, labels, grid)]
    for method in args.methods.split(","):
        seq_fn = jax.jit(functools.partial(certify_sequential, variables=variables, radii=grid, n0=N0,
                                           max_samples=N, batch_size=args.seq_batch_size, method=method, **common))
        seqs, seconds = timed(lambda k, x: seq_fn(k, x=x), keys, images)
        result = summarise(f"sequential_{method}", [c.prediction for c in seqs], [c.radius for c in seqs],
                           [c.num_samples for c in seqs], seconds, labels, grid)
        result["savings"] = savings(result, grid, N)
        results.append(result)

    base = results[0]
    print(f"{len(indices)} digits test images, sigma={SIGMA}, alpha={ALPHA}, grid {list(grid)}")
    print(f"{'method':<20}{'forward passes':>16}{'mean/img':>10}{'median/img':>12}{'s/img':>8}{'x fewer':>9}"
          f"{'x faster':>10}  certified accuracy on the grid")
    for r in results:
        r["fewer_forward_passes"] = base["total_forward_passes"] / r["total_forward_passes"]
        r["speedup_wall"] = base["seconds_total"] / r["seconds_total"]
        r["max_accuracy_gap_points"] = 100 * max(abs(a - b) for a, b in zip(r["certified_accuracy"],
                                                                           base["certified_accuracy"]))
        print(f"{r['method']:<20}{r['total_forward_passes']:>16,}{r['mean_samples']:>10.0f}"
              f"{r['median_samples']:>12.0f}{r['seconds_per_image']:>8.2f}{r['fewer_forward_passes']:>9.1f}"
              f"{r['speedup_wall']:>10.1f}  " + " ".join(f"{a:.3f}" for a in r["certified_accuracy"]))
    for r in results[1:]:
        print(f"{r['method']}: largest gap to CERTIFY {r['max_accuracy_gap_points']:.2f} points; samples by largest "
              f"certified grid radius: {json.dumps(r['savings']['by_largest_certified_grid_radius'])}; images "
              f"at the budget: {r['savings']['images_at_max_samples']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {"sigma": SIGMA, "n0": N0, "n": N, "alpha": ALPHA, "grid": list(grid),
                                            "images": indices.tolist(), "seq_batch_size": args.seq_batch_size,
                                            "workdir": args.workdir or f"trained {args.train_steps} steps"},
                               "machine": machine_info(), "results": results}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
