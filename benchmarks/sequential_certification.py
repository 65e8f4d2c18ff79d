"""Sequential certification against CERTIFY: forward passes, wall time and certified accuracy on the radius grid.

    python benchmarks/sequential_certification.py --workdir=runs/digits --num_images=60 --skip=6
    python benchmarks/sequential_certification.py --workdir=runs/cifar10_s050 --dataset=cifar10 \\
        --data_path=../shared/data/cifar10-test.npz --num_images=500 --skip=20
    python benchmarks/sequential_certification.py --exact_level --sigma=0.5      # the grid tests' true level, seconds

On every ``--skip``-th test image: CERTIFY (n0 = 100, n = ``--n``, alpha 0.001, batch 1000; cached per image in
``results/sequential_certification_certify_cache.json`` under a hash of the settings and the model, since it is the
slow part) and ``certify_sequential`` (at most ``--n`` estimation draws, a look every ``--seq_batch`` draws, the grid
0, 0.25, ... up to 3 sigma) for every ``--methods`` x ``--futility``. Image ``i`` has the key ``fold_in(key(0), i)``.
Reported: forward passes (total, per image), seconds per image, images certified at each grid radius, and the
*clairvoyant bound*: the saving of a method told each p_A in advance that uses the fixed-n Clopper-Pearson test at
the smallest n still certifying CERTIFY's grid radius, a ceiling for any valid method at CERTIFY's accuracy.
``--single_radii`` (in sigma units) asks the betting sequence about one radius at a time (Voracek 2024's setting).

``--exact_level``: for each grid threshold, the exact probability that the grid test (``certification.grid_tests``)
ever rejects when p_A sits on it, by dynamic programming over the binomial counts; Ville's inequality guarantees at
most alpha, the ratio says how much of it the tests spend. Results: ``results/grid_test_exact_level.json``.
"""

import functools
import hashlib
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from absl import app, flags

import timing
from smoothjax import certification, checkpointing, data
from smoothjax.certification import _sampling, grid_tests
from smoothjax.jobs.certify_modes import resolve_radii
from smoothjax.models import make_apply_fn

N0, ALPHA, CHUNK = 100, 0.001, 1000
CACHE = timing.HERE / "results" / "sequential_certification_certify_cache.json"
_WORKDIR = flags.DEFINE_string("workdir", None, "a trained run (train.py --workdir=...)")
_DATASET = flags.DEFINE_string("dataset", "digits", "test data of the run")
_DATA_PATH = flags.DEFINE_string("data_path", "", "its file (.npz), if the dataset needs one")
_SIGMA = flags.DEFINE_float("sigma", None, "noise level (default: the run's training sigma)")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 360, "images to certify")
_SKIP = flags.DEFINE_integer("skip", 1, "every skip-th test image")
_N = flags.DEFINE_integer("n", 100_000, "CERTIFY's n and the sequential max_samples")
_SEQ_BATCH = flags.DEFINE_integer("seq_batch", 100, "draws between looks")
_METHODS = flags.DEFINE_list("methods", ["grid", "betting"], "betting, union, grid")
_FUTILITY = flags.DEFINE_list("futility", ["projected"], "projected, exact")
_SINGLE = flags.DEFINE_list("single_radii", [], "radii in sigma units certified one at a time, e.g. 0.5,1.25,2")
_NO_CACHE = flags.DEFINE_boolean("no_cache", False, "recompute CERTIFY and do not write the cache")
_EXACT = flags.DEFINE_boolean("exact_level", False, "compute the grid tests' exact type-1 error instead")
_OUT = flags.DEFINE_string("out", "", "JSON results (default: results/<what>.json)")


def certify_with_hits(apply_fn, variables, sigma, num_classes, n):
    """Jitted ``(key, x) -> (Certificate, hits of the guess per CHUNK draws)``: ``certification.certify``'s exact
    draws (same key split and chunks), keeping the per-chunk hits for offline analysis."""
    def run(key, x):
        key_sel, key_est = jax.random.split(key)
        counts0 = certification.sample_counts(key_sel, apply_fn, variables, x, sigma=sigma, num=N0,
                                              batch_size=CHUNK, num_classes=num_classes)
        per_chunk = jax.lax.map(lambda i: _sampling.chunk_counts(key_est, i, x, apply_fn, variables, sigma,
                                                                 min(CHUNK, n), n, num_classes),
                                jnp.arange(-(-n // min(CHUNK, n))))
        cert = certification.certify_from_counts(counts0, per_chunk.sum(0), sigma=sigma, alpha=ALPHA)
        return cert, per_chunk[:, jnp.argmax(counts0)]
    return jax.jit(run)


def each_image(fn, keys, images) -> tuple[list, list]:
    """``fn(key, x)`` on each image after one warm-up call: (results, seconds per image)."""
    jax.block_until_ready(fn(keys[0], images[0]))
    results, seconds = [], []
    for key, x in zip(keys, images):
        t0 = time.perf_counter()
        results.append(jax.device_get(jax.block_until_ready(fn(key, x))))
        seconds.append(time.perf_counter() - t0)
    return results, seconds


def certify_cached(apply_fn, variables, sigma, num_classes, keys, images, indices) -> list[dict]:
    settings = dict(dataset=_DATASET.value, sigma=sigma, n0=N0, n=_N.value, alpha=ALPHA, batch_size=CHUNK,
                    model=hashlib.sha1(b"".join(np.asarray(v).tobytes() for v in jax.tree.leaves(variables)))
                    .hexdigest()[:16])
    tag = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = json.loads(CACHE.read_text()) if CACHE.exists() and not _NO_CACHE.value else {}
    entry = cache.setdefault(tag, {"settings": settings, "images": {}})
    todo = [j for j, i in enumerate(indices) if str(i) not in entry["images"]]
    if todo:
        fn = certify_with_hits(apply_fn, variables, sigma, num_classes, _N.value)
        results, seconds = each_image(fn, [keys[j] for j in todo], images[todo])
        for j, (cert, hits), s in zip(todo, results, seconds):
            entry["images"][str(indices[j])] = dict(prediction=int(cert.prediction), radius=float(cert.radius),
                                                    count=int(cert.count), seconds=s,
                                                    hits_per_chunk=np.asarray(hits).tolist())
        if not _NO_CACHE.value:
            CACHE.write_text(json.dumps(cache, separators=(",", ":")) + "\n")
    return [entry["images"][str(i)] for i in indices]


def summarise(name, predictions, radii, samples, seconds, labels, grid) -> dict:
    correct = (np.asarray(predictions) == labels) & (np.asarray(predictions) != -1)
    certified = [int(np.sum(correct & (np.asarray(radii) >= r))) for r in grid]
    samples = np.asarray(samples, np.int64)
    return {"method": name, "total_forward_passes": int(samples.sum()), "mean_samples": float(samples.mean()),
            "median_samples": float(np.median(samples)), "seconds_per_image": float(np.mean(seconds)),
            "certified_images": certified, "samples": samples.tolist()}


def clairvoyant_bound(certs, labels, grid, sigma, n) -> float:
    """(N0 + n) / mean draws of a method that knows p_A (CERTIFY's count / n) and uses the fixed-m one-sided
    Clopper-Pearson test at the smallest m certifying CERTIFY's grid radius; images not certified cost N0."""
    grid_p = scipy.stats.norm.cdf(np.asarray(grid) / sigma)
    ms = np.unique(np.round(np.logspace(1, np.log10(n), 600)).astype(np.int64))
    draws = []
    for c, y in zip(certs, labels):
        level = int(np.searchsorted(np.asarray(grid), c["radius"], side="right")) if c["prediction"] == y else 0
        s = np.round(c["count"] / n * ms)
        ok = (np.where(s > 0, scipy.stats.beta.ppf(ALPHA, np.maximum(s, 1), ms - s + 1), 0.0) >= grid_p[level - 1]
              if level else np.zeros(1, bool))
        draws.append(N0 + (int(ms[np.argmax(ok)]) if ok.any() else (n if level else 0)))
    return float((N0 + n) / np.mean(draws))


def exact_level(sigma: float) -> dict:
    """P_p[the grid test ever rejects | p_A = p_g] / alpha for each grid threshold, looks every --seq_batch draws."""
    checks = np.arange(1, _N.value // _SEQ_BATCH.value + 1) * _SEQ_BATCH.value
    rows = []
    for r in resolve_radii("", sigma):
        p = float(np.nextafter(scipy.stats.norm.cdf(r / sigma), 1.0))  # as certify_sequential rounds p_g
        s_lower = grid_tests.rejection_table(ALPHA, checks, [p], _N.value)[:, 0]
        pmf = scipy.stats.binom.pmf(np.arange(_SEQ_BATCH.value + 1), _SEQ_BATCH.value, p)
        dist, low, rejected = np.ones(1), 0, 0.0  # dist[i] = P[S = low + i, not rejected yet]
        for k in range(len(checks)):
            dist = np.convolve(dist, pmf)
            cut = max(int(s_lower[k]) - low, 0)
            rejected, dist = rejected + dist[cut:].sum(), dist[:cut]
            drop = int(np.searchsorted(np.cumsum(dist), 1e-14))  # mass below 1e-14: dropped (lowers the figure)
            dist, low = dist[drop:], low + drop
        rows.append({"radius": r, "p_g": p, "error_over_alpha": rejected / ALPHA,
                     "nats_unspent": float(-np.log(rejected / ALPHA)) if rejected > 0 else None})
        print(f"radius {r:6.3f}  p_g {p:.6f}  error / alpha {rejected / ALPHA:.3f}")
    return {"benchmark": "grid_test_exact_level", "sigma": sigma, "alpha": ALPHA, "batch": _SEQ_BATCH.value,
            "max_samples": _N.value, "rows": rows}


def main(argv):
    del argv
    if _EXACT.value:
        timing.write_results(exact_level(_SIGMA.value or 0.5),
                             _OUT.value or timing.HERE / "results" / "grid_test_exact_level.json")
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir (a trained run) is required, e.g. python train.py --config=configs/digits.py "
                             "--workdir=runs/digits")
    model, variables = checkpointing.load_model(_WORKDIR.value)
    sigma = _SIGMA.value or float(checkpointing.read_model_spec(_WORKDIR.value)["sigma"])
    src = data.get_source(_DATASET.value, "test", path=_DATA_PATH.value or None)
    indices = np.arange(_NUM_IMAGES.value) * _SKIP.value
    indices = indices[indices < len(src)]
    images, labels = src.get_batch(indices)
    images, labels = np.asarray(images, np.float32), np.asarray(labels)
    keys = [jax.random.fold_in(jax.random.key(0), int(i)) for i in indices]
    grid, apply_fn = resolve_radii("", sigma), make_apply_fn(model)
    num_classes = int(np.asarray(apply_fn(variables, images[:1])).shape[-1])
    certs = certify_cached(apply_fn, variables, sigma, num_classes, keys, images, indices)
    results = [summarise("certify", [c["prediction"] for c in certs], [c["radius"] for c in certs],
                         [N0 + _N.value] * len(certs), [c["seconds"] for c in certs], labels, grid)]
    common = dict(apply_fn=apply_fn, variables=variables, sigma=sigma, alpha=ALPHA, n0=N0, max_samples=_N.value,
                  batch_size=_SEQ_BATCH.value, num_classes=num_classes)
    runs = [(f"sequential_{m}_{f}", dict(radii=grid, method=m, futility=f)) for m in _METHODS.value
            for f in _FUTILITY.value]
    runs += [(f"single_radius_{float(r):g}_sigma", dict(radii=(float(r) * sigma,))) for r in _SINGLE.value]
    for name, kw in runs:
        fn = jax.jit(functools.partial(certification.certify_sequential, **common, **kw))
        seqs, seconds = each_image(lambda k, x: fn(k, x=x), keys, images)
        results.append(summarise(name, [c.prediction for c in seqs], [c.radius for c in seqs],
                                 [c.num_samples for c in seqs], seconds, labels, kw["radii"]))
    bound = clairvoyant_bound(certs, labels, grid, sigma, _N.value)
    print(f"{len(indices)} {_DATASET.value} images, sigma {sigma}, n {_N.value}, grid {list(grid)}")
    for r in results:
        r["fewer_forward_passes"] = results[0]["total_forward_passes"] / r["total_forward_passes"]
        print(f"{r['method']:<32} {r['total_forward_passes']:>13,} passes ({r['fewer_forward_passes']:5.1f}x fewer), "
              f"{r['seconds_per_image']:.2f} s/image, certified {r['certified_images']}")
    print(f"clairvoyant bound: {bound:.1f}x fewer forward passes than CERTIFY at CERTIFY's certified accuracy")
    timing.write_results({"benchmark": "sequential_certification", "workdir": _WORKDIR.value, "sigma": sigma,
                          "n0": N0, "n": _N.value, "alpha": ALPHA, "grid": list(grid), "images": indices.tolist(),
                          "machine": timing.machine_info(), "results": results, "clairvoyant_bound": bound},
                         _OUT.value or timing.HERE / "results" / "sequential_certification.json")


if __name__ == "__main__":
    app.run(main)
