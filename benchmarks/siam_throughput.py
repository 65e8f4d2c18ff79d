"""SIAM throughput: smoothed inference and the adversarial-training step, JAX versus the PyTorch reference algorithm.

Run from the repository root, timing runs wrapped in ``flock /tmp/bench.lock``. The first run compiles for most of
its time (measured under load 3.5 on 2 cores: 330 s for the PGD-7 train step, 228 s for EPGD, about 50 s per
inference setting; 17 minutes in all); the persistent compilation cache (``--cache-dir``) makes reruns load them:
the rerun took 4.3 minutes::

    flock /tmp/bench.lock python benchmarks/siam_throughput.py
    python benchmarks/siam_throughput.py --m-test 1 8 --infer-batch 64 32 --train 1 --no-torch   # quick look

Model: SIAM's CIFAR ResNet-20 as ``configs/siam_cifar10.py`` builds it (CPNI weight noise of rank 5 on every conv,
PNI on the head, input noise 0.25 in the reference's normalised units = ``0.25 * std_c`` pixels), 10 classes, random
32x32x3 images in [0, 1] (throughput does not depend on the weights). What is timed:

* smoothed inference: ``jax.jit(smoothing.smoothed_predict)`` (mode ``vote``) on a batch of ``--infer-batch``
  images with m_test passes in ``--m-test`` (1, 8, 64, 512); figure: images / s. Passes run one at a time over
  the whole batch (``chunk_size=--chunk``, default 1): every pass has its own weight-noise draw, and vmapping
  passes turns each conv into a grouped conv that XLA:CPU runs about 5x slower (measured while writing this).
* adversarial-training step: one jitted ``training.make_train_step(siam.adversarial_training_loss)`` (PGD-7 of
  eps/4, eps = 8/255, in inference mode on the frozen model with ``m_train`` passes per step, 1 = PGD, 8 = EPGD;
  then 0.5 CE(adv) + 0.5 CE(clean) in train mode, gradient clipping 0.05, SGD Nesterov 0.9, weight decay 1e-4) on
  ``--train-batch`` images; figure: images / s.

With PyTorch importable (never a dependency; ``--no-torch`` skips it) the same run times the reference algorithms of
yanemcovsky/SIAM, written below from its description (``layers.py`` ``NoisedConv2DColored``/``NoisedLinear``,
``ResNet_Cifar.monte_carlo_predict``, ``EPGD_FGSMk``, ``expectation_forward_backward``, ``adv_forward_backward``),
not copied: the ResNet-20 of ``torch_reference.py`` with every conv replaced by a CPNI conv (``W + sqrt(|std(W) d|)
z_d + F z_f`` drawn per forward call) and the head by a PNI linear layer, input noise on the normalised image;
inference = m_test forward calls on the batch with a vote histogram, ``torch.no_grad``; training = PGD / EPGD in
eval mode (EPGD: m_train forward/backward calls per step, each loss divided by m_train), then the mixed loss in train
mode, ``clip_grad_norm_(0.05)``, SGD step. One deliberate difference, in torch's favour: the parameters are frozen
(``requires_grad_(False)``) during the attack, whereas the reference also back-propagates into them there.
JAX and torch calls are interleaved round by round (``timing.time_interleaved``); the ratio is the median over
rounds of (JAX rate) / (torch rate), and ``ratio_quiet`` the same over rounds the rest of the machine left quiet.
Goal (the issue): at least 2x. Results: ``benchmarks/results/siam_throughput.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # fair to PyTorch on a shared machine (attack_throughput.py)

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from timing import (QUIET, cpu_share, load_average, paired_ratios, time_interleaved, warn_if_busy,  # noqa: E402
                    write_results)
from train_throughput import CIFAR10_MEAN, CIFAR10_STD, NOISE_NOTE, fair_ratio, import_torch, machine_info  # noqa: E402

from smoothjax import siam, training  # noqa: E402
from smoothjax.models import count_params, get_model, make_stochastic_apply_fn  # noqa: E402
from smoothjax.smoothing import smoothed_predict  # noqa: E402

NUM_CLASSES, IMAGE_SHAPE, RANK = 10, (32, 32, 3), 5
NOISE_SD_REF = 0.25  # the reference's --noise_sd, in normalised units
EPSILON, PGD_STEPS, ADV_WEIGHT, CLIP = 8 / 255, 7, 0.5, 0.05


def use_compilation_cache(directory: str) -> None:
    """Persistent XLA cache: the unrolled PGD train steps take minutes to compile on 2 busy cores; reruns load them."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def random_batch(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((batch, *IMAGE_SHAPE), dtype=np.float32), rng.integers(0, NUM_CLASSES, batch).astype(np.int32)


# --------------------------------------------------------------------------------------------------- JAX side
def jax_model():
    model = get_model("cifar_resnet20_cpni", NUM_CLASSES, mean=CIFAR10_MEAN, std=CIFAR10_STD, noise_rank=RANK,
                      noise_sd=tuple(NOISE_SD_REF * s for s in CIFAR10_STD))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
    return model, variables


def compiled(fn, *args):
    t0 = time.perf_counter()
    c = jax.jit(fn).lower(*args).compile()
    return c, round(time.perf_counter() - t0, 1)


def jax_infer_runner(batch: int, m: int, chunk: int):
    model, variables = jax_model()
    apply_fn = make_stochastic_apply_fn(model)
    x = jnp.asarray(random_batch(batch)[0])
    f, compile_s = compiled(lambda v, xx, k: smoothed_predict(k, apply_fn, v, xx, num_samples=m, mode="vote",
                                                              chunk_size=chunk), variables, x, jax.random.key(1))
    keys = iter(range(10**6))
    return (lambda: jax.block_until_ready(f(variables, x, jax.random.key(next(keys))))), compile_s, \
        count_params(variables)


def jax_train_runner(batch: int, m_train: int):
    model, _ = jax_model()
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=1, momentum=0.9, weight_decay=1e-4,
                                 nesterov=True, grad_clip_norm=CLIP, lr_schedule="constant")
    loss = siam.adversarial_training_loss(model, epsilon=EPSILON, num_steps=PGD_STEPS, m_train=m_train,
                                          adv_weight=ADV_WEIGHT)
    images, labels = random_batch(batch)
    data = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    holder = {"state": jax.jit(lambda k: training.create_train_state(model, tx, k, IMAGE_SHAPE))(jax.random.key(0))}
    t0 = time.perf_counter()
    step = jax.jit(training.make_train_step(loss, tx), donate_argnums=0).lower(
        holder["state"], data, jax.random.key(1)).compile()
    compile_s = round(time.perf_counter() - t0, 1)

    def run():
        holder["state"], metrics = step(holder["state"], data, jax.random.key(1))
        jax.block_until_ready((holder["state"], metrics))

    return run, compile_s


# ------------------------------------------------------------------------------------------------- torch side
def torch_model(torch, torch_reference):
    """torch_reference's ResNet-20 with CPNI convs, a PNI head and input noise on the normalised image."""
    nn, F = torch.nn, torch.nn.functional

    class CPNIConv(nn.Conv2d):
        def __init__(self, conv):
            super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             bias=False)
            self.weight.data.copy_(conv.weight.data)
            self.noise_d = nn.Parameter(torch.full((self.weight.numel(),), 0.25 ** 2))
            self.noise_factor = nn.Parameter(torch.full((self.weight.numel(), RANK), 0.01))

        def forward(self, x):
            z_d, z_f = torch.randn(self.weight.numel()), torch.randn(RANK)
            noise = torch.sqrt(torch.abs(torch.std(self.weight) * self.noise_d)) * z_d + self.noise_factor @ z_f
            return F.conv2d(x, self.weight + noise.view_as(self.weight), None, self.stride, self.padding)

    class PNILinear(nn.Linear):
        def __init__(self, fc):
            super().__init__(fc.in_features, fc.out_features)
            self.alpha = nn.Parameter(torch.full_like(self.weight, 0.25))

        def forward(self, x):
            noise = torch.normal(torch.zeros_like(self.weight), torch.std(self.weight).item())
            return F.linear(x, self.weight + self.alpha * noise, self.bias)

    class InputNoise(nn.Module):
        def forward(self, x):
            return x + torch.randn_like(x) * NOISE_SD_REF

    def swap(module):
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, name, CPNIConv(child))
            elif isinstance(child, nn.Linear):
                setattr(module, name, PNILinear(child))
            else:
                swap(child)

    torch.manual_seed(0)
    plain = torch_reference.get_model("cifar_resnet20", NUM_CLASSES)  # Sequential(NormalizeLayer, CifarResNet)
    swap(plain)
    return nn.Sequential(plain[0], InputNoise(), plain[1])


def _tensors(torch, batch):
    images, labels = random_batch(batch)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(labels.astype(np.int64))


def torch_infer_runner(torch, torch_reference, batch: int, m: int):
    model = torch_model(torch, torch_reference).eval()
    x, _ = _tensors(torch, batch)

    def run():  # monte_carlo_predict: m forward calls on the batch, a vote histogram, its argmax
        with torch.no_grad():
            votes = torch.zeros(batch, NUM_CLASSES)
            for _ in range(m):
                votes.scatter_add_(1, model(x).argmax(1, keepdim=True), torch.ones(batch, 1))
            return votes.argmax(1)

    return run, sum(p.numel() for p in model.parameters())


def torch_pgd(torch, model, x, y, m_train: int):
    """EPGD_FGSMk in pixel units (the reference steps in normalised units with eps / std_c: the same box)."""
    f = torch.nn.functional
    x_adv = (x + torch.empty_like(x).uniform_(-EPSILON, EPSILON)).clamp(0, 1)
    for _ in range(PGD_STEPS):
        x_adv.requires_grad_(True)
        for _ in range(m_train):  # expectation_forward_backward: per-pass losses / m_train, gradients accumulate
            (f.cross_entropy(model(x_adv), y) / m_train).backward()
        with torch.no_grad():
            x_adv = x_adv + x_adv.grad.sign() * (EPSILON / 4)
            x_adv = torch.min(torch.max(x_adv, x - EPSILON), x + EPSILON).clamp(0, 1)
    return x_adv.detach()


def torch_train_runner(torch, torch_reference, batch: int, m_train: int):
    model = torch_model(torch, torch_reference)
    x, y = _tensors(torch, batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    f = torch.nn.functional

    def run():  # adv_forward_backward + clip_grad_norm_ + SGD step
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        x_adv = torch_pgd(torch, model, x, y, m_train)
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        opt.zero_grad()
        loss = (1 - ADV_WEIGHT) * f.cross_entropy(model(x), y) + ADV_WEIGHT * f.cross_entropy(model(x_adv), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()

    return run


# ---------------------------------------------------------------------------------------------------- driver
def summarize(timing: dict, images: int) -> dict:
    rates = [images / s for s in timing["wall"]]
    return {"img_per_s": round(statistics.median(rates), 3), "min": round(min(rates), 3),
            "max": round(max(rates), 3), "cpu_share": cpu_share(timing), "other_load": timing["other"],
            "call_s": [round(s, 3) for s in timing["wall"]]}


def measure(kind: str, batch: int, m: int, args, torch, torch_reference) -> dict:
    print(f"\n{kind}: batch {batch}, m={m}: compiling ...", flush=True)
    record = {"kind": kind, "batch": batch, "m": m}
    if kind == "inference":
        jax_run, record["jax_compile_s"], record["params"] = jax_infer_runner(batch, m, args.chunk)
        record["chunk_size"] = args.chunk
    else:
        jax_run, record["jax_compile_s"] = jax_train_runner(batch, m)
    runners = {"jax": jax_run}
    if torch is not None:
        if kind == "inference":
            runners["torch"], torch_params = torch_infer_runner(torch, torch_reference, batch, m)
            if torch_params != record["params"]:  # the two models hold the same parameters
                raise RuntimeError(f"parameter counts differ: jax {record['params']}, torch {torch_params}")
        else:
            runners["torch"] = torch_train_runner(torch, torch_reference, batch, m)
    record["load_average_before"] = load_average()
    times = time_interleaved(runners, rounds=args.steps, warmup=args.warmup, idle_wait=args.idle_wait)
    record["load_average_after"] = load_average()
    for name, timing in times.items():
        record[name] = summarize(timing, batch)
    line = f"  compiled in {record['jax_compile_s']} s; jax {record['jax']['img_per_s']:.2f} img/s"
    if "torch" in times:
        record.update(paired_ratios(times))
        line += (f", torch {record['torch']['img_per_s']:.2f} img/s, ratio {record['ratio_jax_over_torch']:.2f} "
                 f"(quiet {record['quiet_rounds']}/{record['rounds']}: {record['ratio_quiet']})")
    print(line, flush=True)
    return record


def print_table(records: list) -> None:
    print(f"\n{'what':<11}{'m':>5}{'batch':>7}{'jax img/s':>12}{'torch img/s':>13}{'jax/torch':>11}{'quiet':>8}")
    for r in records:
        t = f"{r['torch']['img_per_s']:.2f}" if "torch" in r else "-"
        ratio = f"{r['ratio_jax_over_torch']:.2f}" if "torch" in r else "-"
        quiet = "-" if r.get("ratio_quiet") is None else f"{r['ratio_quiet']:.2f}"
        what = r["kind"] if r["kind"] == "inference" else ("PGD-7" if r["m"] == 1 else "EPGD-7")
        print(f"{what:<11}{r['m']:>5}{r['batch']:>7}{r['jax']['img_per_s']:>12.2f}{t:>13}{ratio:>11}{quiet:>8}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m-test", nargs="+", type=int, default=[1, 8, 64, 512])
    p.add_argument("--infer-batch", nargs="+", type=int, default=[64, 32, 8, 2],
                   help="inference batch per m-test value (same length), or one value for all")
    p.add_argument("--chunk", type=int, default=1, help="passes vmapped together in JAX inference")
    p.add_argument("--train", nargs="*", type=int, default=[1, 8], help="m_train values of the train step")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed rounds per configuration")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--idle-wait", type=float, default=5.0)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--cache-dir", default=str(HERE.parent / ".cache" / "jax"),
                   help="persistent compilation cache ('' = off); jax_compile_s is then the load time on reruns")
    p.add_argument("--out", default=str(HERE / "results" / "siam_throughput.json"))
    a = p.parse_args(argv)
    if len(a.infer_batch) == 1:
        a.infer_batch = a.infer_batch * len(a.m_test)
    if len(a.infer_batch) != len(a.m_test) or min(a.infer_batch + a.m_test + [a.train_batch, a.steps, a.chunk]) < 1:
        p.error(f"--infer-batch {a.infer_batch} must match --m-test {a.m_test}; sizes, steps and chunk must be >= 1")
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    use_compilation_cache(args.cache_dir)
    torch, torch_reference = import_torch(args.no_torch)
    info = machine_info(torch)
    print(f"{info['cpu_model']}, {info['cores']} cores; jax {info['jax']}, torch {info['torch'] or 'absent'}")
    warn_if_busy(info)
    t0 = time.perf_counter()
    records = [measure("inference", b, m, args, torch, torch_reference) for m, b in zip(args.m_test, args.infer_batch)]
    records += [measure("train_step", args.train_batch, m, args, torch, torch_reference) for m in args.train]
    print_table(records)
    result = {
        "benchmark": "siam_throughput",
        "what": ("images/s of SIAM's smoothed inference (vote over m_test stochastic passes) and adversarial-training "
                 "step (PGD-7 m_train=1, EPGD-7 m_train=8) on a CPNI ResNet-20, random 32x32x3 images; median over "
                 "timed calls, compile and warm-up excluded"),
        "goal": "jax >= 2x the PyTorch reference algorithm on the same CPU",
        "machine": info,
        "settings": {**vars(args), "epsilon": EPSILON, "pgd_steps": PGD_STEPS, "noise_sd_ref": NOISE_SD_REF,
                     "cpni_rank": RANK, "quiet_threshold": QUIET},
        "configs": records,
        "goal_met": all(fair_ratio(r) >= 2 for r in records) if torch is not None else None,
        "total_s": round(time.perf_counter() - t0, 1),
        "noise_note": NOISE_NOTE,
    }
    write_results(result, args.out)
    return result


if __name__ == "__main__":
    main()
