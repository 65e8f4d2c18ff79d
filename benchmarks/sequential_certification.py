"""Sequential certification vs CERTIFY: forward passes per image, wall time and certified accuracy on the grid.

Run from the repository root. Digits (default; trains the README's digits model first unless --workdir is given;
CERTIFY takes ~3.6 s per image on 2 cores, so the whole 360-image test split takes ~22 minutes once, then is
cached)::

    flock /tmp/bench.lock python benchmarks/sequential_certification.py --workdir=/tmp/seq_digits
    python benchmarks/sequential_certification.py --workdir=runs/digits --num-images 60 --skip 6

CIFAR-10 (a smoothjax workdir or a PyTorch Cohen et al. checkpoint, imported with ``smoothjax.torch_import``;
the lossless test set ``../shared/data/cifar10-test.npz``; skips with a message when either is absent)::

    python benchmarks/sequential_certification.py --checkpoint=models/cifar10/resnet110/noise_1.00/checkpoint.pth.tar \
        --num-images 500 --skip 20

What it does, on every --skip-th test image (--num-images of them):

* CERTIFY (``certification.certify``'s stream and decision): n0 = 100, n = --n (100,000), alpha = 0.001, batch
  1000: n0 + n forward passes. Per-image results (and the hits of the guess per 1000-draw chunk) are cached in
  ``results/sequential_certification_certify_cache.json`` under a key of the settings and a hash of the model
  variables, so re-tuning the sequential rule never recomputes them (--no-cache to ignore).
* ``certify_sequential``: n0 = 100, at most --max-samples (default n) estimation draws, alpha = 0.001, looked at
  every --seq-batch-size draws, on the grid {0, 0.25, ..., 3 sigma} (``certify_modes.resolve_radii('')``), for every --futility rule
  (``projected``: the default futility rule; ``exact``: stop only when the next radius is ruled out by the upper
  bound or unreachable even if every remaining draw hits) and every --methods (``betting``, ``union``: confidence
  sequences; ``grid``: one test per grid threshold, ``smoothjax.grid_tests``).

Both are jitted for one image (compile excluded: one warm-up image first), image ``i`` with key
``fold_in(key(0), i)``, so each image stops on its own (no batch waits for its slowest image). Reported: total and
per-image (mean / median) forward passes, seconds per image, certified accuracy at every grid radius for both, and
where the savings come from (samples by the largest grid radius certified, and how many images spent the whole
budget), and the *clairvoyant bound*: the savings of a method that knows each p_A and uses the fixed-n
Clopper-Pearson test at the smallest n that still certifies CERTIFY's grid radius, an upper bound on what any valid
method can save at CERTIFY's certified accuracy on this model. The hard limit: no method certifies beyond sigma * Phi^-1(alpha^(1/n)) (3.81 sigma at n = 1e5), and radii
near it need ~n draws; the grid stops at 3 sigma. Results go to ``benchmarks/results/sequential_certification.json``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from smoothjax import certification, certify_modes, checkpointing, data  # noqa: E402
from smoothjax.models import make_apply_fn  # noqa: E402
from smoothjax.sequential import FUTILITY_RULES, certify_sequential  # noqa: E402
from train_throughput import machine_info  # noqa: E402

N0, N, ALPHA, CHUNK = 100, 100_000, 0.001, 1000
CIFAR_DATA = ROOT.parent / "shared" / "data" / "cifar10-test.npz"
CACHE = HERE / "results" / "sequential_certification_certify_cache.json"


def train(workdir: Path, steps: int) -> None:
    """Trains the digits model with train.py (``--config.total_steps=steps``) into ``workdir``."""
    cmd = [sys.executable, "train.py", "--config=configs/digits.py", f"--workdir={workdir}",
           f"--config.total_steps={steps}", "--config.eval_split="]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)


def load_cifar(args):
    """(apply_fn, variables, sigma, source name, model id) for --checkpoint, or None (with a message) if absent."""
    path = Path(args.checkpoint)
    if not path.exists() or not Path(args.data_path).exists():
        missing = path if not path.exists() else Path(args.data_path)
        print(f"skipped: {missing} does not exist (CIFAR-10 needs --checkpoint and the lossless test set "
              f"--data-path, default {CIFAR_DATA})")
        return None
    if path.is_dir():  # a smoothjax workdir (trained, or written by python -m smoothjax.torch_import)
        model, variables = checkpointing.load_model(path)
        sigma = args.sigma or (checkpointing.read_model_spec(path) or {}).get("sigma")
    else:  # a PyTorch checkpoint (Cohen et al. layout), read without PyTorch
        from smoothjax import torch_import
        sigma = args.sigma or torch_import.sigma_from_path(path)
        model, variables = torch_import.load(path, sigma=sigma, dataset="cifar10")
    if not sigma:
        raise SystemExit(f"--sigma is needed: {path} records no noise level")
    return make_apply_fn(model), variables, float(sigma), "cifar10"


def model_id(variables) -> str:
    """A hash of every variable's bytes: the cache key part that changes when the model does."""
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(variables):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]


def certify_with_trajectory(apply_fn, variables, sigma, num_classes, n):
    """Jitted ``(key, x) -> (Certificate, hits of the guess per CHUNK draws)``: ``certification.certify``'s exact
    streams (same key split, chunk size and fold-in), keeping the per-chunk counts for offline analysis."""
    chunk = min(CHUNK, n)

    def run(key, x):
        key_sel, key_est = jax.random.split(key)
        counts0 = certification.sample_counts(key_sel, apply_fn, variables, x, sigma=sigma, num=N0,
                                              batch_size=CHUNK, num_classes=num_classes)
        per_chunk = jax.lax.map(lambda i: certification._chunk_counts(key_est, i, x, apply_fn, variables, sigma,
                                                                      chunk, n, num_classes),
                                jnp.arange(-(-n // chunk)))
        cert = certification.certify_from_counts(counts0, per_chunk.sum(0), sigma=sigma, alpha=ALPHA)
        return cert, per_chunk[:, jnp.argmax(counts0)]
    return jax.jit(run)


def certify_cached(args, apply_fn, variables, sigma, num_classes, keys, images, indices, source) -> list[dict]:
    """CERTIFY's per-image results (prediction, radius, count, guess hits per chunk, seconds), from the cache when
    present for these settings; new images are computed (warm-up first) and written back every 10 images."""
    settings = dict(source=source, model=model_id(variables), sigma=sigma, n0=N0, n=args.n, alpha=ALPHA,
                    batch_size=CHUNK, key="fold_in(key(0), index)")
    tag = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = json.loads(CACHE.read_text()) if CACHE.exists() and not args.no_cache else {}
    entry = cache.setdefault(tag, {"settings": settings, "images": {}})
    fn, warm = certify_with_trajectory(apply_fn, variables, sigma, num_classes, args.n), False
    for count, (key, x, i) in enumerate(zip(keys, images, indices)):
        if str(i) in entry["images"]:
            continue
        if not warm:
            jax.block_until_ready(fn(keys[0], images[0]))
            warm = True
        t0 = time.perf_counter()
        cert, hits = jax.device_get(jax.block_until_ready(fn(key, x)))
        entry["images"][str(i)] = dict(prediction=int(cert.prediction), radius=float(cert.radius),
                                       count=int(cert.count), seconds=time.perf_counter() - t0,
                                       hits_per_chunk=np.asarray(hits).tolist())
        if count % 10 == 9 or count == len(indices) - 1:
            print(f"CERTIFY {count + 1}/{len(indices)} images", flush=True)
            if not args.no_cache:
                CACHE.parent.mkdir(parents=True, exist_ok=True)
                CACHE.write_text(json.dumps(cache, separators=(",", ":")) + "\n")
    return [entry["images"][str(i)] for i in indices]


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
            "certified_images": [int(round(a * len(labels))) for a in accuracy],
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
        groups[key] = {"images": int(np.sum(level == g)), "mean_samples": float(samples[level == g].mean()),
                       "share_of_all_samples": float(samples[level == g].sum() / samples.sum())}
    return {"by_largest_certified_grid_radius": groups,
            "images_at_max_samples": int(np.sum(samples >= N0 + max_samples))}


def clairvoyant_bound(certs, labels, grid, sigma, n) -> dict:
    """The most any valid method could save while certifying what CERTIFY certified, from CERTIFY's own counts.

    Per image CERTIFY certified at grid radius r (correct class), the smallest fixed m at which the one-sided
    Clopper-Pearson bound of the expected count ``round(p_hat m)`` (``p_hat`` = CERTIFY's count / n) still reaches
    ``Phi(r / sigma)``; other images cost nothing. A sequential method must reject at its stopping time with a valid
    test, and no level-alpha test at a fixed m beats Clopper-Pearson (the UMP one-sided binomial test, up to
    discreteness), so it needs about this many draws *knowing* ``p_A`` in advance, and more without."""
    grid_p = scipy.stats.norm.cdf(np.asarray(grid) / sigma)
    ms = np.unique(np.round(np.logspace(1, np.log10(n), 600)).astype(np.int64))
    draws = []
    for c, y in zip(certs, labels):
        level = int(np.searchsorted(np.asarray(grid), c["radius"], side="right")) if c["prediction"] == y else 0
        if level == 0:
            draws.append(N0)
            continue
        s = np.round(c["count"] / n * ms)
        lower = np.where(s > 0, scipy.stats.beta.ppf(ALPHA, np.maximum(s, 1), ms - s + 1), 0.0)
        ok = lower >= grid_p[level - 1]
        draws.append(N0 + (int(ms[np.argmax(ok)]) if ok.any() else n))
    draws = np.asarray(draws)
    return {"mean_samples": float(draws.mean()), "fewer_forward_passes": float((N0 + n) / draws.mean()),
            "what": clairvoyant_bound.__doc__.split("\n\n")[0]}


def single_radius(args, r_sigma, sigma, common, variables, keys, images, labels, certs) -> dict:
    """``certify_sequential`` (betting, default futility) asked about the one radius ``r_sigma * sigma``: mean draws
    per image and images certified there, next to CERTIFY's count (the setting of Voracek 2024's figures)."""
    fn = jax.jit(functools.partial(certify_sequential, variables=variables, radii=(r_sigma * sigma,), n0=N0,
                                   max_samples=args.n, batch_size=args.seq_batch_size, **common))
    seqs, seconds = timed(lambda k, x: fn(k, x=x), keys, images)
    radius = r_sigma * sigma
    certified = int(np.sum([(c.prediction == y) & (c.radius >= radius) for c, y in zip(seqs, labels)]))
    reference = int(np.sum([(c["prediction"] == y) & (c["radius"] >= radius) for c, y in zip(certs, labels)]))
    samples = np.asarray([c.num_samples for c in seqs], np.int64)
    print(f"single radius {r_sigma:g} sigma: {samples.mean():.0f} draws per image (median {np.median(samples):.0f}), "
          f"{certified} images certified (CERTIFY {reference})")
    return {"method": f"sequential_single_radius_{r_sigma:g}_sigma", "radius": radius, "samples": samples.tolist(),
            "mean_samples": float(samples.mean()), "total_forward_passes": int(samples.sum()),
            "certified_images": certified, "certify_certified_images": reference,
            "seconds_per_image": float(np.mean(seconds))}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="trained digits run (default: train one into a temporary directory)")
    parser.add_argument("--train-steps", type=int, default=660, help="steps when training (660 = the full job)")
    parser.add_argument("--checkpoint", help="CIFAR-10: a smoothjax workdir or a PyTorch checkpoint file")
    parser.add_argument("--data-path", default=str(CIFAR_DATA), help="CIFAR-10 test set .npz (lossless)")
    parser.add_argument("--sigma", type=float, help="noise level (default: digits 0.25; CIFAR from the model)")
    parser.add_argument("--num-images", type=int, default=360)
    parser.add_argument("--skip", type=int, default=1, help="every skip-th test image")
    parser.add_argument("--n", type=int, default=N, help="CERTIFY's n and the sequential max_samples")
    parser.add_argument("--max-samples", type=int, help="sequential max_samples (default: --n)")
    parser.add_argument("--seq-batch-size", type=int, default=100, help="draws between looks at the sequence")
    parser.add_argument("--methods", default="betting", help="comma list of betting, union, grid")
    parser.add_argument("--futility", default="projected,exact", help=f"comma list of {', '.join(FUTILITY_RULES)}")
    parser.add_argument("--single-radii", default="0.5,1.25,2",
                        help="radii in sigma units certified one at a time (Voracek 2024's anchor); '' = none")
    parser.add_argument("--certify-only", action="store_true", help="only fill the CERTIFY cache")
    parser.add_argument("--no-cache", action="store_true", help="recompute CERTIFY and do not write the cache")
    parser.add_argument("--out", default=str(HERE / "results" / "sequential_certification.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            loaded = load_cifar(args)
            if loaded is None:
                return 0
            apply_fn, variables, sigma, source = loaded
            src = data.get_source("cifar10", "test", path=args.data_path)
        else:
            workdir = Path(args.workdir) if args.workdir else Path(tmp) / "digits"
            if not args.workdir:
                print(f"training the digits model ({args.train_steps} steps) ...", flush=True)
                train(workdir, args.train_steps)
            model, variables = checkpointing.load_model(workdir)
            apply_fn, sigma, source = make_apply_fn(model), args.sigma or 0.25, "digits"
            src = data.get_source("digits", "test")
    indices = np.arange(args.num_images) * args.skip
    indices = indices[indices < len(src)]
    images, labels = src.get_batch(indices)
    images, labels = np.asarray(data.as_float_image(images), np.float32), np.asarray(labels)
    keys = [jax.random.fold_in(jax.random.key(0), int(i)) for i in indices]
    grid = certify_modes.resolve_radii("", sigma)
    num_classes = int(np.asarray(apply_fn(variables, images[:1])).shape[-1])
    common = dict(apply_fn=apply_fn, sigma=sigma, alpha=ALPHA, num_classes=num_classes)

    certs = certify_cached(args, apply_fn, variables, sigma, num_classes, keys, images, indices, source)
    results = [summarise("certify", [c["prediction"] for c in certs], [c["radius"] for c in certs],
                         [N0 + args.n] * len(certs), [c["seconds"] for c in certs], labels, grid)]
    if args.certify_only:
        return 0
    for method in args.methods.split(","):
        for futility in args.futility.split(","):
            seq_fn = jax.jit(functools.partial(certify_sequential, variables=variables, radii=grid, n0=N0,
                                               max_samples=args.max_samples or args.n,
                                               batch_size=args.seq_batch_size, method=method,
                                               futility=futility, **common))
            seqs, seconds = timed(lambda k, x: seq_fn(k, x=x), keys, images)
            result = summarise(f"sequential_{method}_{futility}", [c.prediction for c in seqs],
                               [c.radius for c in seqs], [c.num_samples for c in seqs], seconds, labels, grid)
            result["savings"] = savings(result, grid, args.max_samples or args.n)
            results.append(result)
    for r_sigma in [float(v) for v in args.single_radii.split(",") if v.strip()]:
        results.append(single_radius(args, r_sigma, sigma, common, variables, keys, images, labels, certs))
    bound = clairvoyant_bound(certs, labels, grid, sigma, args.n)
    print(f"clairvoyant bound (knows p_A, fixed-n Clopper-Pearson): {bound['fewer_forward_passes']:.1f}x fewer "
          f"forward passes than CERTIFY at CERTIFY's certified accuracy")
    report(args, results, source, sigma, grid, indices, bound)
    return 0


def report(args, results, source, sigma, grid, indices, bound) -> None:
    """Prints the comparison table and writes the JSON (per-image samples, radii and predictions included)."""
    base, singles = results[0], [r for r in results if "single_radius" in r["method"]]
    results = [r for r in results if r not in singles]
    print(f"{len(indices)} {source} test images, sigma={sigma}, alpha={ALPHA}, n={args.n}, grid {list(grid)}")
    print(f"{'method':<30}{'forward passes':>16}{'mean/img':>10}{'median/img':>12}{'s/img':>8}{'x fewer':>9}"
          f"{'x faster':>10}  certified images on the grid")
    for r in results:
        r["fewer_forward_passes"] = base["total_forward_passes"] / r["total_forward_passes"]
        r["speedup_wall"] = base["seconds_total"] / r["seconds_total"]
        r["max_accuracy_gap_points"] = 100 * max(abs(a - b) for a, b in zip(r["certified_accuracy"],
                                                                           base["certified_accuracy"]))
        print(f"{r['method']:<30}{r['total_forward_passes']:>16,}{r['mean_samples']:>10.0f}"
              f"{r['median_samples']:>12.0f}{r['seconds_per_image']:>8.2f}{r['fewer_forward_passes']:>9.1f}"
              f"{r['speedup_wall']:>10.1f}  " + " ".join(f"{a:d}" for a in r["certified_images"]))
    for r in results[1:]:
        print(f"{r['method']}: largest gap to CERTIFY {r['max_accuracy_gap_points']:.2f} points; samples by largest "
              f"certified grid radius: {json.dumps(r['savings']['by_largest_certified_grid_radius'])}; images "
              f"at the budget: {r['savings']['images_at_max_samples']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {"source": source, "sigma": sigma, "n0": N0, "n": args.n,
                                            "alpha": ALPHA, "grid": list(grid), "images": indices.tolist(),
                                            "seq_batch_size": args.seq_batch_size,
                                            "max_samples": args.max_samples or args.n,
                                            "model": args.checkpoint or args.workdir
                                            or f"trained {args.train_steps} steps"},
                               "machine": machine_info(), "results": results, "single_radius": singles,
                               "clairvoyant_bound": bound},
                              indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    sys.exit(main())
