"""smoothjax's public functions against the PyTorch reference algorithms, same model and sizes, on this CPU.

Run from the repository root (about 8-12 minutes on 2 cores; wrap in ``flock /tmp/bench.lock`` on a shared
machine)::

    python benchmarks/compare_torch.py                                  # ResNet-20 and ResNet-110
    python benchmarks/compare_torch.py --models cifar_resnet20 --rounds 2

Workloads, each for every model in ``--models`` (random weights and 32x32x3 images in [0, 1], 10 classes, sigma 0.25):

=====================  =====================================================  ======================================
row                    smoothjax (jitted, compile excluded)                   PyTorch reference
=====================  =====================================================  ======================================
sample_counts          ``certification.sample_counts`` (num, batch)          Cohen's ``Smooth._sample_noise`` loop
certify                ``certification.certify`` (n0 = 100, n, batch)         two ``_sample_noise`` calls + bound
smooth_pgd_l2          ``attacks.smooth_pgd_l2`` (B, m, T, eps 0.5)           Salman et al.'s ``PGD_L2`` (m draws)
gaussian train step    ``training.make_train_step`` + Gaussian augmentation  ``x + randn * sigma``, CE, SGD step
smoothadv train step   ``make_train_step(smoothadv.smoothadv_loss(...))``     PGD_L2 then SGD on the m noisy copies
=====================  =====================================================  ======================================

The runners are those of ``certify_throughput.py``, ``attack_throughput.py`` and ``train_throughput.py`` (same
definitions, so the figures are comparable with theirs). JAX and torch calls are interleaved round by round in
alternating order (``timing.time_interleaved``; each round first waits up to ``--idle-wait`` s for other processes to
go quiet); the ratio is the median over rounds of (JAX speed) / (torch speed) in the same round, with its min-max.
"Matmul ceiling": a forward pass is an implicit matmul, so ``sample_counts``' GFLOP/s (analytic conv + linear FLOPs)
over the GFLOP/s of a large float32 matmul in the same framework is the fraction of the ceiling inference reaches.
Goals (issue 7): training and attack >= 1x, inference >= 1.5x. Writes ``benchmarks/results/compare_torch.json`` and
``compare_torch.md`` (a markdown table) beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import attack_throughput as at  # noqa: E402  (sets OMP_WAIT_POLICY=PASSIVE unless set: fair to torch under load)
import certify_throughput as ct  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import train_throughput as tt  # noqa: E402
from timing import QUIET, cpu_share, load_average, paired_ratios, time_interleaved, write_results  # noqa: E402

from smoothjax.models import get_model, make_apply_fn  # noqa: E402

GOALS = {"sample_counts": 1.5, "certify": 1.5, "smooth_pgd_l2": 1.0, "gaussian_train_step": 1.0,
         "smoothadv_train_step": 1.0}


def workloads(model_name: str, args, torch, torch_reference) -> list:
    """[(row, size text, work per call, unit, make_jax, make_torch)] for one model; makers return a runner."""
    def jax_model():
        model = get_model(model_name, ct.NUM_CLASSES, mean=tt.CIFAR10_MEAN, std=tt.CIFAR10_STD)
        variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *ct.IMAGE_SHAPE)), train=False))(jax.random.key(0))
        return make_apply_fn(model), variables, jnp.asarray(ct.random_image())

    def torch_model():
        torch.manual_seed(0)
        model = torch_reference.get_model(model_name, ct.NUM_CLASSES).eval()
        return model, torch.from_numpy(np.ascontiguousarray(ct.random_image().transpose(2, 0, 1)))

    def jax_sampler():
        return ct.make_jax_sampler(*jax_model(), num=args.num, batch_size=args.batch)[0]

    def jax_certifier():
        return ct.make_jax_certifier(*jax_model(), n0=100, n=args.certify_n, batch_size=args.batch)[0]

    b, m, steps = args.attack_batch, args.attack_noise, args.attack_steps
    rows = [("sample_counts", f"num {args.num}, batch {args.batch}", args.num, "noisy passes/s", jax_sampler,
             lambda: ct.make_torch_sampler(torch, torch_reference, *torch_model(), num=args.num,
                                           batch_size=args.batch)),
            ("certify", f"n0 100, n {args.certify_n}, batch {args.batch}", 100 + args.certify_n, "noisy passes/s",
             jax_certifier, lambda: ct.make_torch_certifier(torch, torch_reference, *torch_model(), n0=100,
                                                            n=args.certify_n, batch_size=args.batch)),
            ("smooth_pgd_l2", f"B {b}, m {m}, T {steps}", b * steps, "image-steps/s",
             lambda: at.jax_attack_runner(model_name, b, m, steps)[0],
             lambda: at.torch_attack_runner(torch, torch_reference, model_name, b, m, steps)),
            ("gaussian_train_step", f"batch {args.train_batch}", args.train_batch, "img/s",
             lambda: tt.make_jax_runner(model_name, args.train_batch)[0],
             lambda: tt.make_torch_runner(torch, torch_reference, model_name, args.train_batch)[0]),
            ("smoothadv_train_step", f"B {b}, m {m}, T {steps}", b, "img/s",
             lambda: at.jax_train_runner(model_name, b, m, steps)[0],
             lambda: at.torch_train_runner(torch, torch_reference, model_name, b, m, steps))]
    return [r for r in rows if r[0] in args.workloads]


def measure(model_name: str, row, args, torch) -> dict:
    name, size, work, unit, make_jax, make_torch = row
    print(f"{model_name} {name} ({size}): compiling ...", flush=True)
    runners = {"jax": make_jax()}
    if torch is not None:
        runners["torch"] = make_torch()
    rounds = args.certify_rounds if name == "certify" else args.rounds
    times = time_interleaved(runners, rounds=rounds, warmup=0 if name in ("sample_counts", "certify") else 1,
                             idle_wait=args.idle_wait)
    rec = {"model": model_name, "workload": name, "size": size, "unit": unit, "goal_ratio": GOALS[name]}
    for side, timing in times.items():
        rates = [work / s for s in timing["wall"]]
        rec[side] = {"rate": round(statistics.median(rates), 2), "min": round(min(rates), 2),
                     "max": round(max(rates), 2), "cpu_share": cpu_share(timing), "other_load": timing["other"],
                     "call_s": [round(s, 3) for s in timing["wall"]]}
    if torch is not None:
        rec.update(paired_ratios(times))
    line = f"  jax {rec['jax']['rate']:.1f} {unit}"
    if torch is not None:
        line += (f", torch {rec['torch']['rate']:.1f}: ratio {rec['ratio_jax_over_torch']:.2f} "
                 f"({rec['ratio_min']:.2f}-{rec['ratio_max']:.2f}; quiet rounds {rec['quiet_rounds']}/{rounds})")
    print(line, flush=True)
    return rec


def markdown(records: list, bounds: dict) -> str:
    lines = ["| model | workload | size | unit | smoothjax | PyTorch | ratio (min-max) | goal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        t = f"{r['torch']['rate']:,.1f}" if "torch" in r else "-"
        ratio = (f"{r['ratio_jax_over_torch']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
                 if "torch" in r else "-")
        lines.append(f"| {r['model'].replace('cifar_', '')} | {r['workload']} | {r['size']} | {r['unit']} | "
                     f"{r['jax']['rate']:,.1f} | {t} | {ratio} | >= {r['goal_ratio']} |")
    for model, b in bounds.items():
        lines.append("")
        lines.append(f"{model}: inference {b['jax_forward_gflops']} GFLOP/s = {b['jax_fraction_of_matmul']:.0%} of "
                     f"JAX's {b['jax_matmul_gflops']} GFLOP/s matmul ceiling" +
                     (f"; torch {b['torch_forward_gflops']} GFLOP/s = {b['torch_fraction_of_matmul']:.0%} of its "
                      f"{b['torch_matmul_gflops']}" if "torch_forward_gflops" in b else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_resnet110"])
    parser.add_argument("--workloads", nargs="+", default=list(GOALS), choices=list(GOALS))
    parser.add_argument("--num", type=int, default=2000, help="noise draws per sample_counts call")
    parser.add_argument("--batch", type=int, default=400, help="noisy copies per forward pass (sampling, certify)")
    parser.add_argument("--certify-n", type=int, default=2000, help="n of certify (n0 = 100)")
    parser.add_argument("--attack-batch", type=int, default=16)
    parser.add_argument("--attack-noise", type=int, default=4, help="m noise draws (attack, SmoothAdv step)")
    parser.add_argument("--attack-steps", type=int, default=5, help="T PGD steps (attack, SmoothAdv step)")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per framework and workload")
    parser.add_argument("--certify-rounds", type=int, default=2)
    parser.add_argument("--idle-wait", type=float, default=5.0)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "compare_torch.json"))
    args = parser.parse_args(argv)
    for k in ("num", "batch", "certify_n", "attack_batch", "attack_noise", "attack_steps", "train_batch", "rounds",
              "certify_rounds"):
        if getattr(args, k) < 1:
            parser.error(f"--{k.replace('_', '-')}={getattr(args, k)} not allowed; need an integer >= 1")
    torch, torch_reference = tt.import_torch(args.no_torch)
    info = tt.machine_info(torch)
    print(f"{info['cpu_model']}, {info['cores']} cores; jax {info['jax']}, torch {info['torch'] or 'absent'}; "
          f"load average {info['load_average_at_start']}", flush=True)
    probes = [ct.matmul_ceiling(2048, torch, args.idle_wait)]
    records = [measure(m, row, args, torch) for m in args.models for row in workloads(m, args, torch, torch_reference)]
    probes.append(ct.matmul_ceiling(2048, torch, args.idle_wait))
    bounds = {}
    for r in records:
        if r["workload"] != "sample_counts":
            continue
        flops = ct.cifar_resnet_forward_flops(int(r["model"].removeprefix("cifar_resnet")))
        jm = max(p["jax_gflops"] for p in probes)
        b = {"forward_gflop_per_pass": round(flops / 1e9, 4), "jax_forward_gflops": round(r["jax"]["max"] * flops / 1e9, 1),
             "jax_matmul_gflops": jm}
        b["jax_fraction_of_matmul"] = round(b["jax_forward_gflops"] / jm, 3)
        if "torch" in r:
            tm = max(p["torch_gflops"] for p in probes)
            b.update(torch_forward_gflops=round(r["torch"]["max"] * flops / 1e9, 1), torch_matmul_gflops=tm,
                     torch_fraction_of_matmul=round(r["torch"]["max"] * flops / 1e9 / tm, 3))
        bounds[r["model"]] = b
    table = markdown(records, bounds)
    print("\n" + table)
    result = {"benchmark": "compare_torch", "machine": info, "settings": {**vars(args), "quiet_threshold": QUIET},
              "load_average_end": load_average(), "configs": records, "matmul_probes": probes, "bound": bounds,
              "goals": GOALS,
              "goals_met": {f"{r['model']}/{r['workload']}": r["ratio_jax_over_torch"] >= r["goal_ratio"]
                            for r in records if "torch" in r},
              "ratio": "median over rounds of (jax rate) / (torch rate) in the same round; min-max over rounds",
              "bound_note": "forward GFLOP/s of the best sample_counts call (analytic conv + linear FLOPs) over the "
                            "same framework's 2048^2 float32 matmul GFLOP/s (best of a probe at start and end)"}
    write_results(result, args.out)
    Path(args.out).with_suffix(".md").write_text(table)
    return result


if __name__ == "__main__":
    main()
