"""Exact type-1 error of the grid tests (``smoothjax.grid_tests``): how much Ville's inequality leaves unspent.

Run from the repository root (a few seconds)::

    python benchmarks/grid_test_exact_level.py --sigma 0.5

For each grid threshold ``p_g = Phi(r_g / sigma)`` (r_g = 0, 0.25, ..., 3 sigma), the rejection counts of
``grid_tests.rejection_table`` (a look every --batch draws up to --max-samples) are fixed; the probability that the
test ever rejects when the success probability is exactly ``p_g`` (the worst case: the rejection region is
up-closed in the successes, so the probability grows with it) is computed by dynamic programming over the binomial
counts, with the mass below 1e-14 of the lower tail dropped (which can only lower the figure by that much per look).
Ville's inequality guarantees at most alpha; the ratio shows how much of alpha the tests actually spend, and so what
an exactly calibrated test could gain: lowering the evidence threshold log(1/alpha) by log(alpha / error) nats.
Results: ``benchmarks/results/grid_test_exact_level.json`` (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from smoothjax import certify_modes, grid_tests  # noqa: E402


def exact_rejection_probability(p: float, checks, s_lower) -> float:
    """P_p[S_{t_k} >= s_lower[k] for some k], S_t ~ Binomial(t, p), looks at ``checks`` (equally spaced)."""
    step = int(checks[0])
    pmf = scipy.stats.binom.pmf(np.arange(step + 1), step, p)
    dist, low, rejected = np.ones(1), 0, 0.0  # dist[i] = P[S = low + i, not yet rejected]
    for k in range(len(checks)):
        dist = np.convolve(dist, pmf)
        cut = max(int(s_lower[k]) - low, 0)
        rejected += dist[cut:].sum()
        dist = dist[:cut]
        drop = int(np.searchsorted(np.cumsum(dist), 1e-14))
        dist, low = dist[drop:], low + drop
    return float(rejected)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=100, help="draws between looks")
    parser.add_argument("--max-samples", type=int, default=100_000)
    parser.add_argument("--out", default=str(HERE / "results" / "grid_test_exact_level.json"))
    args = parser.parse_args(argv)
    if args.max_samples % args.batch:
        raise SystemExit(f"--max-samples={args.max_samples} must be a multiple of --batch={args.batch}")
    checks = np.arange(1, args.max_samples // args.batch + 1) * args.batch
    rows = []
    print(f"alpha {args.alpha}, a look every {args.batch} draws up to {args.max_samples}, sigma {args.sigma}")
    print(f"{'radius':>8} {'p_g':>10} {'error/alpha':>12} {'nats left':>10}")
    for r in certify_modes.resolve_radii("", args.sigma):
        p = float(np.nextafter(scipy.stats.norm.cdf(r / args.sigma), 1.0))  # as certify_sequential rounds p_g
        s_lower = grid_tests.rejection_table(args.alpha, checks, [p], args.max_samples)[:, 0]
        ratio = exact_rejection_probability(p, checks, s_lower) / args.alpha
        rows.append({"radius": r, "p_g": p, "error_over_alpha": ratio, "nats_unspent": float(-np.log(ratio))})
        print(f"{r:8.3f} {p:10.6f} {ratio:12.3f} {-np.log(ratio):10.3f}")
    result = {"benchmark": "grid_test_exact_level", "settings": vars(args), "rows": rows,
              "log_one_over_alpha": float(np.log(1 / args.alpha))}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
