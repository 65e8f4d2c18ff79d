"""Where the time of a train step goes on XLA:CPU: per-op profile of the ResNet-20 and ResNet-110 train steps.

Run from the repository root (about 3 minutes on 2 cores, 9 with ``--ab-conv``; under ``flock /tmp/bench.lock``)::

    python benchmarks/profile_gradients.py                     # ResNet-20 and -110, batch 64
    python benchmarks/profile_gradients.py --models cifar_resnet20 --steps 2 --conv xla

What it does, per model: compiles the jitted Gaussian-augmentation train step of ``train_throughput.py`` (the
library's step: ``training.make_train_step``), times ``--steps`` steps of every model interleaved (wall time, the
per-block figure of the issue), then records ``--steps`` more under ``jax.profiler.trace`` and parses the XSpace:
every XLA thunk event carries its ``hlo_op``, matched here to the compiled HLO text for its shape, convolution
window and the source op. Ops are put in categories (forward convolution, input-gradient and weight-gradient
convolutions, layout transposes/copies, reductions, elementwise fusions, loops) and the top ops by time are printed
with shapes and achieved GFLOP/s (convolutions: 2 x multiply-adds). Times are the duration of each op's thunk on
the thread that ran it, per step; an op whose ``cpu`` column is near 1 kept one core busy, the other idle (the
profiler does not see helper threads of a kernel library, so the ``cpu_share`` of the whole step, from
``time.process_time``, is reported too).

Per residual block: (step time) / (number of blocks), ResNet-110 (54 blocks) against ResNet-20 (9); the issue's
goal is a ratio <= 1.3. The marginal cost ((t110 - t20) / 45 blocks) is reported as well, since the fixed part
(stem, head, optimizer, noise) inflates the small model's per-block figure. Results go to
``benchmarks/results/profile_gradients.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from timing import cores, cpu_share, load_average, time_interleaved, write_results  # noqa: E402
from train_throughput import machine_info, make_jax_runner  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\([^=]*?\)|\S+) ([\w-]+)\((.*)$")
_SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """(instructions, computations) of compiled HLO text: name -> dict(shape, opcode, rest, computation)."""
    instrs, comps, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        if line and not line.startswith(" ") and "{" in line and "(" in line:
            current = line.split(" ", 1)[0].lstrip("%")
            if current == "ENTRY":
                current = line.split(" ")[1].lstrip("%")
            continue
        m = _INSTR.match(line)
        if m:
            name, shape, opcode, rest = m.groups()
            instrs[name] = {"shape": shape, "opcode": opcode, "rest": rest, "computation": current}
            comps[current].append(name)
    return instrs, comps


def _dims(shape: str) -> list[int]:
    m = _SHAPE.search(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _field(rest: str, key: str) -> str | None:
    m = re.search(key + r"=([^,}\s]+)", rest)
    return m.group(1) if m else None


def _op_name(rest: str) -> str:
    m = re.search(r'op_name="([^"]*)"', rest)
    return m.group(1) if m else ""


def describe(name: str, instrs: dict) -> dict:
    """Category, shapes, convolution window and FLOPs of the HLO instruction ``name`` (a fusion is looked into)."""
    ins = instrs.get(name)
    if ins is None:
        return {"category": "other (not in HLO)", "shape": "", "operands": []}
    operands = [instrs[o]["shape"] for o in re.findall(r"%([\w.\-]+)", ins["rest"].split(")", 1)[0]) if o in instrs]
    body = [n for n, i in instrs.items() if i["computation"] == _field(ins["rest"], "calls").lstrip("%")] \
        if _field(ins["rest"], "calls") else []
    inner = [instrs[n] for n in body] or [ins]
    convs = [i for i in inner if i["opcode"] == "convolution"]
    out = {"shape": ins["shape"], "operands": operands, "source": _op_name(ins["rest"])}
    if convs:
        conv = convs[0]
        window = _field(conv["rest"], "size") or "1x1"
        wsize = [int(v) for v in window.split("x")]
        labels = _field(conv["rest"], "dim_labels") or ""
        lhs_shape = [instrs[o]["shape"] for o in re.findall(r"%([\w.\-]+)", conv["rest"].split(")", 1)[0])][:1]
        feat = _dims(lhs_shape[0])[labels.split("_")[0].index("f")] if lhs_shape and "f" in labels else 0
        n_out = 1
        for d in _dims(conv["shape"]):
            n_out *= d
        flops = 2 * n_out * feat * (wsize[0] * (wsize[1] if len(wsize) > 1 else 1))
        source = _op_name(conv["rest"]) or out["source"]
        if max(wsize) > 7:
            cat = "conv weight-gradient"
        elif "transpose(" in source:
            cat = "conv input-gradient"
        else:
            cat = "conv forward"
        out.update(category=cat, window=window, dim_labels=labels, flops=flops, source=source,
                   stride=_field(conv["rest"], "stride"), lhs_dilate=_field(conv["rest"], "lhs_dilate"))
        return out
    opcodes = {i["opcode"] for i in inner}
    if ins["opcode"] == "while":
        cat = "while loop (noise RNG)"
    elif name.startswith(("transpose", "copy")) or opcodes <= {"transpose", "copy", "parameter", "bitcast"}:
        cat = "transpose/copy (layout)"
    elif "dot" in opcodes:
        cat = "dot"
    elif "reduce" in opcodes:
        cat = "reduction (batch-norm statistics, bias/scale gradients)"
    else:
        cat = "elementwise fusion (batch norm, ReLU, add, optimizer)"
    out["category"] = cat
    return out


def profile_ops(run, steps: int) -> dict:
    """{hlo_op: total thunk seconds / steps} over ``steps`` calls of ``run`` under ``jax.profiler.trace``."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(steps):
                run()
        data = jax.profiler.ProfileData.from_file(glob.glob(d + "/**/*.xplane.pb", recursive=True)[0])
        totals = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    op = dict(event.stats).get("hlo_op")
                    if op is not None:
                        totals[op] += event.duration_ns * 1e-9
    return {op: t / steps for op, t in totals.items()}


def analyse(model: str, batch: int, run, compiled, step_s: float, steps: int, top: int) -> dict:
    """Profiles ``run`` and returns the per-category and top-op record of one model."""
    instrs, _ = parse_hlo(compiled.as_text())
    per_op = profile_ops(run, steps)
    rows = []
    for op, sec in per_op.items():
        d = describe(op, instrs)
        row = {"op": op, "ms": round(sec * 1e3, 3), **{k: d.get(k, "") for k in ("category", "shape", "operands", "source")}}
        if "flops" in d:
            row.update(window=d["window"], stride=d["stride"], lhs_dilate=d["lhs_dilate"], dim_labels=d["dim_labels"],
                       gflops_per_s=round(d["flops"] / sec / 1e9, 1) if sec > 0 else None)
        rows.append(row)
    rows.sort(key=lambda r: -r["ms"])
    cats = collections.defaultdict(lambda: {"ms": 0.0, "ops": 0})
    for r in rows:
        cats[r["category"]]["ms"] += r["ms"]
        cats[r["category"]]["ops"] += 1
    total = sum(r["ms"] for r in rows)
    categories = {c: {"ms": round(v["ms"], 1), "share": round(v["ms"] / total, 3), "ops": v["ops"]}
                  for c, v in sorted(cats.items(), key=lambda kv: -kv[1]["ms"])}
    blocks = 3 * (int(model.removeprefix("cifar_resnet")) - 2) // 6
    return {"model": model, "batch_size": batch, "blocks": blocks, "step_ms": round(step_s * 1e3, 1),
            "ms_per_img": round(step_s * 1e3 / batch, 3), "ms_per_block": round(step_s * 1e3 / blocks, 2),
            "op_ms_sum": round(total, 1), "categories": categories, "top_ops": rows[:top]}


def print_model(rec: dict) -> None:
    print(f"\n{rec['model']}, batch {rec['batch_size']}: step {rec['step_ms']:.0f} ms (cpu share "
          f"{rec['cpu_share']}), {rec['ms_per_block']:.1f} ms per block; sum of op times {rec['op_ms_sum']:.0f} ms")
    for cat, v in rec["categories"].items():
        print(f"  {v['ms']:8.1f} ms {100 * v['share']:5.1f} %  {v['ops']:4d} ops  {cat}")
    print(f"  top {len(rec['top_ops'])} ops:")
    for r in rec["top_ops"]:
        conv = (f" window {r['window']} stride {r['stride'] or 1} {r['gflops_per_s']} GFLOP/s"
                if "window" in r else "")
        ops = " ".join(s.split("{")[0] for s in r["operands"][:3])
        print(f"  {r['ms']:7.2f} ms  {r['category'][:22]:22s} {r['shape'].split('{')[0]:>18s} <- {ops}{conv}")


def per_block_summary(records: list) -> dict:
    by = {r["model"]: r for r in records}
    if not {"cifar_resnet20", "cifar_resnet110"} <= set(by):
        return {}
    a, b = by["cifar_resnet20"], by["cifar_resnet110"]
    marginal = (b["step_ms"] - a["step_ms"]) / (b["blocks"] - a["blocks"])
    out = {"ms_per_block_resnet20": a["ms_per_block"], "ms_per_block_resnet110": b["ms_per_block"],
           "ratio_110_over_20": round(b["ms_per_block"] / a["ms_per_block"], 2),
           "marginal_ms_per_block_20_to_110": round(marginal, 2),
           "marginal_over_resnet20_per_block": round(marginal / a["ms_per_block"], 2), "goal": "ratio <= 1.3"}
    for cat in set(a["categories"]) | set(b["categories"]):
        ca, cb = a["categories"].get(cat, {"ms": 0}), b["categories"].get(cat, {"ms": 0})
        out.setdefault("category_ms_per_block", {})[cat] = [round(ca["ms"] / a["blocks"], 2),
                                                           round(cb["ms"] / b["blocks"], 2)]
    return out


def loop_runner(model_name: str, batch: int, conv: str, steps: int = 3, unroll: bool = False):
    """A jitted PGD-like loop: ``steps`` input gradients of a ResNet in a ``lax.fori_loop`` (or unrolled), compiled."""
    import jax.numpy as jnp

    from smoothjax.models import get_model, make_apply_fn
    model = get_model(model_name, 10, conv=conv)
    apply_fn = make_apply_fn(model)
    x = jax.random.uniform(jax.random.key(0), (batch, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x[:1])

    def body(_, x):
        g = jax.grad(lambda x: jnp.sum(jax.nn.log_softmax(apply_fn(variables, x))[:, 0]))(x)
        return jnp.clip(x + 0.01 * jnp.sign(g), 0, 1)

    fn = jax.jit(lambda x: jax.lax.fori_loop(0, steps, body, x, unroll=unroll))
    t0 = time.perf_counter()
    compiled = fn.lower(x).compile()
    print(f"  {model_name} {'unrolled' if unroll else 'fori_loop'} conv={conv}: compiled in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return lambda: jax.block_until_ready(compiled(x))


def strided_weight_gradient(x: jax.Array, g: jax.Array, kernel_hw: tuple[int, int], strides, padding,
                            precision=None) -> jax.Array:
    """(kh, kw, I, O) weight gradient of a strided conv of x (N, H, W, I) with output cotangent g (N, Ho, Wo, O),
    as one dot per kernel tap over a strided slice of x (XLA's: a dilated-window convolution); equal up to rounding."""
    import jax.numpy as jnp
    from jax import lax
    n, ho, wo, _ = g.shape
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    sh, sw = strides
    taps = [jnp.einsum("nhwi,nhwo->io", lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1,
                                                                    xp.shape[3]), (1, sh, sw, 1)), g,
                       precision=precision)
            for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]
    return jnp.stack(taps).reshape(*kernel_hw, x.shape[3], g.shape[3])


def strided_dots_runner(model_name: str, batch: int):
    """The train step with fix B2 whose strided convolutions take ``strided_weight_gradient`` (an experiment: it
    was slower, 0.85-0.96x, so the library keeps XLA's weight gradient); compiled while ``cpu_conv.select`` is
    patched."""
    from functools import partial

    from jax import lax

    from smoothjax.models import cpu_conv

    @partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
    def conv(x, w, strides, padding, precision=None):
        return cpu_conv.conv_cpu_vjp(x, w, strides, padding, precision)

    def fwd(x, w, strides, padding, precision):
        return conv(x, w, strides, padding, precision), (x, w)

    def bwd(strides, padding, precision, res, g):
        x, w = res
        dx, dw = jax.vjp(lambda x, w: cpu_conv.conv_cpu_vjp(x, w, strides, padding, precision), x, w)[1](g)
        if tuple(strides) != (1, 1):
            dw = strided_weight_gradient(x, g, w.shape[:2], strides, padding, precision).astype(w.dtype)
        return dx, dw

    conv.defvjp(fwd, bwd)

    def conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
        return conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), kwargs.get("precision"))

    original = cpu_conv.select
    cpu_conv.select = lambda conv_name=None: conv_general_dilated
    try:
        return make_jax_runner(model_name, batch, conv="cpu_vjp")[0]
    finally:
        cpu_conv.select = original


def ab_conv(models: list, batch: int, rounds: int) -> dict:
    """Before/after fix B2 in one process, interleaved: train steps and a gradient loop with conv "xla" / "cpu_vjp"."""
    runners = {}
    for m in models:
        for conv in ("xla", "cpu_vjp"):
            print(f"compiling {m} train step and gradient loops, conv={conv} ...", flush=True)
            runners[f"{m} train_step conv={conv}"] = make_jax_runner(m, batch, conv=conv)[0]
            runners[f"{m} fori_loop(3 input grads, batch 16) conv={conv}"] = loop_runner(m, 16, conv)
        runners[f"{m} unrolled(3 input grads, batch 16) conv=xla"] = loop_runner(m, 16, "xla", unroll=True)
        runners[f"{m} train_step conv=cpu_vjp+strided_dots"] = strided_dots_runner(m, batch)
    times = time_interleaved(runners, rounds=rounds, warmup=1, idle_wait=10.0)
    out = {}
    for name, t in times.items():
        out[name] = {"median_s": round(statistics.median(t["wall"]), 4), "min_s": round(min(t["wall"]), 4),
                     "max_s": round(max(t["wall"]), 4), "cpu_share": cpu_share(t), "other_load": t["other"]}
        print(f"  {name:60s} {out[name]['median_s']:.3f} s ({out[name]['min_s']:.3f}-{out[name]['max_s']:.3f})")
    for name in list(out):
        if "conv=cpu_vjp" in name:
            base_name = name.split(" conv=")[0] + " conv=xla"
            base = out[base_name]
            ratios = sorted(b / a for a, b in zip(times[name]["wall"], times[base_name]["wall"]))
            out[name]["speedup_vs_xla"] = round(statistics.median(ratios), 2)
            out[name]["speedup_min_max"] = [round(ratios[0], 2), round(ratios[-1], 2)]
            print(f"  speed-up of {name} over conv=xla: {out[name]['speedup_vs_xla']} "
                  f"({ratios[0]:.2f}-{ratios[-1]:.2f}); xla median {base['median_s']:.3f} s")
    return out


def gradient_accuracy(model_name: str, batch: int) -> dict:
    """Relative L2 error of the float32 train-mode parameter gradient (conv "xla" and "cpu_vjp") against float64.

    Run it under the XLA_FLAGS to be judged (e.g. a kernel-selection flag): the float64 reference does not go
    through the float32 kernels. The CIFAR ResNets amplify rounding at initialisation, so compare figures, not 0.
    """
    import jax.numpy as jnp
    import numpy as np

    from smoothjax.models import get_model
    x = jax.random.uniform(jax.random.key(0), (batch, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    variables = jax.jit(get_model(model_name, 10).init)(jax.random.key(1), x[:1])

    def grads(conv, dtype):
        model = get_model(model_name, 10, conv=conv, dtype=dtype)
        cast = lambda t: jax.tree.map(lambda v: v.astype(dtype), t)

        def loss(params):
            logits, _ = model.apply({"params": params, "batch_stats": cast(variables["batch_stats"])},
                                    x.astype(dtype), train=True, mutable=["batch_stats"])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

        g = jax.jit(jax.grad(loss))(cast(variables["params"]))
        return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(g)])

    jax.config.update("jax_enable_x64", True)
    try:
        ref = grads("xla", jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", False)
    out = {c: round(float(np.linalg.norm(grads(c, jnp.float32) - ref) / np.linalg.norm(ref)), 5)
           for c in ("xla", "cpu_vjp")}
    print(f"{model_name} batch {batch}: float32 gradient vs float64, relative L2: {out}")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_resnet110"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed and profiled steps per model")
    parser.add_argument("--top", type=int, default=15, help="ops listed per model")
    parser.add_argument("--conv", default=None, choices=["auto", "xla", "cpu_vjp"],
                        help="models' convolution (smoothjax.models.cpu_conv); default: the library's default")
    parser.add_argument("--ab-conv", action="store_true",
                        help="also time conv='xla' against 'cpu_vjp' (fix B2) interleaved: train steps and loops")
    parser.add_argument("--out", default=str(HERE / "results" / "profile_gradients.json"))
    parser.add_argument("--accuracy", action="store_true",
                        help="only print the float32-vs-float64 gradient error of each model (no timing, no JSON)")
    args = parser.parse_args(argv)
    if args.accuracy:
        return {m: gradient_accuracy(m, args.batch) for m in args.models}
    if args.steps < 1 or args.batch < 1 or args.top < 1:
        parser.error(f"--steps={args.steps} --batch={args.batch} --top={args.top} not allowed; need >= 1")
    kwargs = {} if args.conv is None else {"conv": None if args.conv == "auto" else args.conv}
    runners, compiled = {}, {}
    for m in args.models:
        print(f"compiling {m}, batch {args.batch} ...", flush=True)
        run, info = make_jax_runner(m, args.batch, **kwargs)
        runners[m], compiled[m] = run, info["compiled"]
    times = time_interleaved(runners, rounds=args.steps, warmup=1, idle_wait=10.0)
    records = []
    for m in args.models:
        rec = analyse(m, args.batch, runners[m], compiled[m], statistics.median(times[m]["wall"]), args.steps,
                      args.top)
        rec["cpu_share"] = cpu_share(times[m])
        rec["step_s"] = [round(s, 4) for s in times[m]["wall"]]
        rec["other_load"] = times[m]["other"]
        print_model(rec)
        records.append(rec)
    summary = per_block_summary(records)
    if summary:
        print(f"\nper residual block: ResNet-20 {summary['ms_per_block_resnet20']} ms, ResNet-110 "
              f"{summary['ms_per_block_resnet110']} ms: ratio {summary['ratio_110_over_20']} (goal <= 1.3); marginal "
              f"block 20 -> 110: {summary['marginal_ms_per_block_20_to_110']} ms")
    ab = ab_conv(args.models, args.batch, args.steps) if args.ab_conv else None
    result = {"benchmark": "profile_gradients", "machine": machine_info(), "cores": cores(),
              "load_average_end": load_average(), "settings": {**vars(args)}, "models": records,
              "per_block": summary, "b2_before_after": ab,
              "method": ("thunk durations per hlo_op from jax.profiler (XSpace), matched to the compiled HLO; ms per "
                         "step; step times interleaved between models, median of --steps")}
    write_results(result, args.out)
    return result


if __name__ == "__main__":
    main()
