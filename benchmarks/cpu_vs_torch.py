"""Reproduces docs/performance.md: smoothjax against the PyTorch reference algorithms on this CPU, and two XLA:CPU
measurements behind the library's CPU fixes.

    python benchmarks/cpu_vs_torch.py                                    # the comparison table, ResNet-20 and -110
    python benchmarks/cpu_vs_torch.py --models=cifar_resnet20 --rounds=2
    python benchmarks/cpu_vs_torch.py --experiment=loop_gradients        # fix B2: input gradients in a loop body
    python benchmarks/cpu_vs_torch.py --experiment=conv_gradients        # XLA:CPU weight gradients vs PyTorch

``compare``: for each model (random weights, random 32x32x3 images, 10 classes, sigma 0.25), the rows of the table
(``sample_counts`` num 2000 batch 400; ``certify`` n0 100 n 2000; ``smooth_pgd_l2`` B 16 m 4 T 5 eps 0.5; the
Gaussian train step at batch 64; the SmoothAdv train step B 16 m 4 T 5), each timed against the same algorithm
written in PyTorch below (Cohen et al.'s ``Smooth._sample_noise`` loop, Salman et al.'s ``PGD_L2``, SGD with
momentum 0.9 and weight decay 1e-4), calls interleaved round by round; ratio = median over rounds of JAX speed /
PyTorch speed, with its min-max. PyTorch is optional (never a dependency): without it only JAX is timed.
``loop_gradients``: 3 input gradients of the model at batch 16 inside a ``lax.fori_loop``, with the custom-VJP
convolution (``models.cpu_conv``), with XLA's convolution (``conv="xla"``), and unrolled. ``conv_gradients``: the
weight gradient of a 3x3 convolution of a CIFAR ResNet at batch 64 (16, 32, 64 channels), GFLOP/s in XLA and in
PyTorch (``torch.nn.grad.conv2d_weight``). Results: ``results/cpu_vs_torch_<experiment>.json``.
"""

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import timing
from smoothjax import certification, smoothadv, training
from smoothjax.models import get_model

_EXPERIMENT = flags.DEFINE_enum("experiment", "compare", ["compare", "loop_gradients", "conv_gradients"], "what")
_MODELS = flags.DEFINE_list("models", ["cifar_resnet20", "cifar_resnet110"], "CIFAR ResNets (cifar_resnet<6n+2>)")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "timed rounds")
_NO_TORCH = flags.DEFINE_boolean("no_torch", False, "time JAX only")
_OUT = flags.DEFINE_string("out", "", "JSON results (default results/cpu_vs_torch_<experiment>.json)")
MEAN, STD, SIGMA = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 0.25


# ------------------------------------------------------------------------------- the PyTorch reference algorithms
def torch_model(torch, name: str):
    """Cohen et al.'s CIFAR ResNet of depth 6n+2 behind a (x - mean) / std layer, NCHW, He-initialised."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))

    blocks, cin, layers = (int(name[len("cifar_resnet"):]) - 2) // 6, 16, []
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        layers += [Block(cin, cout, stride)] + [Block(cout, cout, 1) for _ in range(blocks - 1)]
        cin = cout
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
            self.layers, self.fc = nn.Sequential(*layers), nn.Linear(64, 10)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

        def forward(self, x):
            x = self.layers(F.relu(self.bn(self.stem((x - mean) / std))))
            return self.fc(F.avg_pool2d(x, 8).flatten(1))
    return Net()


def torch_sample_noise(torch, model, x, num, batch_size):
    """Cohen et al.'s ``Smooth._sample_noise``: class counts of ``num`` noisy copies of one (C, H, W) image."""
    model.eval()
    counts, remaining = np.zeros(10, np.int64), num
    with torch.no_grad():
        while remaining > 0:
            batch = x.repeat((min(batch_size, remaining), 1, 1, 1))
            remaining -= batch.shape[0]
            counts += np.bincount(model(batch + torch.randn_like(batch) * SIGMA).argmax(1).numpy(), minlength=10)
    return counts


def torch_pgd(torch, model, x, y, noise, epsilon, steps):
    """Salman et al.'s multi-noise ``PGD_L2`` on the soft smoothed classifier; x (B, C, H, W), noise (m, B, C, H, W)."""
    F, (m, b) = torch.nn.functional, noise.shape[:2]
    inputs, rows = x.repeat_interleave(m, 0), noise.transpose(0, 1).reshape(b * m, *x.shape[1:])
    delta = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.SGD([delta], lr=2 * epsilon / steps)
    for _ in range(steps):
        mean_p = F.softmax(model(inputs + delta.repeat_interleave(m, 0) + rows), 1).reshape(b, m, -1).mean(1)
        loss = -F.nll_loss(torch.log(mean_p.clamp(min=1e-20)), y)
        optimizer.zero_grad()
        loss.backward()
        delta.grad.div_(delta.grad.view(b, -1).norm(p=2, dim=1).view(-1, 1, 1, 1))
        optimizer.step()
        delta.data = (x + delta.data).clamp(0, 1) - x
        delta.data.renorm_(p=2, dim=0, maxnorm=epsilon)
    return (x + delta).detach()


def torch_runners(torch, name, x, y, noise):
    """The reference side of each row: {row: run()}."""
    torch.manual_seed(0)
    model = torch_model(torch, name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    tx, ty = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype(np.int64))
    tnoise = torch.from_numpy(noise.transpose(0, 1, 4, 2, 3).copy())

    def train(rows, labels):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(rows), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def smoothadv_step():
        model.eval()
        x_adv = torch_pgd(torch, model, tx[:16], ty[:16], tnoise, 0.5, 5)
        rows = x_adv.repeat_interleave(4, 0) + tnoise.transpose(0, 1).reshape(-1, 3, 32, 32)
        train(rows, ty[:16].repeat_interleave(4))
    return {"sample_counts": lambda: torch_sample_noise(torch, model, tx[0], 2000, 400),
            "certify": lambda: (torch_sample_noise(torch, model, tx[0], 100, 400),
                                torch_sample_noise(torch, model, tx[0], 2000, 400)),
            "smooth_pgd_l2": lambda: (model.eval(), torch_pgd(torch, model, tx[:16], ty[:16], tnoise, 0.5, 5)),
            "gaussian_train_step": lambda: train(tx + torch.randn_like(tx) * SIGMA, ty),
            "smoothadv_train_step": smoothadv_step}


# ------------------------------------------------------------------------------------------------ smoothjax side
def jax_runners(name, x, y, noise):
    model, variables, apply_fn = timing.random_model(name)
    tx = training.make_optimizer(learning_rate=0.1, steps_per_epoch=1, lr_schedule="constant")
    counts = jax.jit(functools.partial(certification.sample_counts, apply_fn=apply_fn, sigma=SIGMA, num=2000,
                                       batch_size=400, num_classes=10))
    certify = jax.jit(functools.partial(certification.certify, apply_fn=apply_fn, sigma=SIGMA, n0=100, n=2000,
                                        alpha=0.001, batch_size=400, num_classes=10))
    pgd = jax.jit(lambda v, k: smoothadv.smooth_pgd_l2(apply_fn, v, x[:16], y[:16], noise, epsilon=0.5, num_steps=5,
                                                       key=k))

    def train_step(loss, batch):
        step = jax.jit(training.make_train_step(loss, tx), donate_argnums=0)
        holder = [jax.jit(lambda k: training.create_train_state(model, tx, k, (32, 32, 3)))(jax.random.key(0))]

        def run():
            holder[0], metrics = step(holder[0], batch, jax.random.key(1))
            jax.block_until_ready((holder[0], metrics))
        return run
    smoothadv_loss = smoothadv.smoothadv_loss(model, sigma=SIGMA, epsilon=0.5, num_steps=5, num_noise_vec=4,
                                              train_multi_noise=True)
    return {"sample_counts": lambda: jax.block_until_ready(counts(jax.random.key(1), variables=variables, x=x[0])),
            "certify": lambda: jax.block_until_ready(certify(jax.random.key(2), variables=variables, x=x[0])),
            "smooth_pgd_l2": lambda: jax.block_until_ready(pgd(variables, jax.random.key(3))),
            "gaussian_train_step": train_step(training.gaussian_augmentation_loss(model, SIGMA),
                                              {"image": x, "label": y}),
            "smoothadv_train_step": train_step(smoothadv_loss, {"image": x[:16], "label": y[:16]})}


WORK = {"sample_counts": (2000, "passes/s"), "certify": (2100, "passes/s"), "smooth_pgd_l2": (16 * 5, "image-steps/s"),
        "gaussian_train_step": (64, "img/s"), "smoothadv_train_step": (16, "img/s")}


def compare(torch) -> dict:
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, 64).astype(np.int32)
    noise = (SIGMA * rng.standard_normal((4, 16, 32, 32, 3))).astype(np.float32)
    rows = {}
    for name in _MODELS.value:
        jax_side = jax_runners(name, x, y, noise)
        torch_side = torch_runners(torch, name, x, y, noise) if torch else {}
        for row, run in jax_side.items():
            runners = {"jax": run, **({"torch": torch_side[row]} if torch else {})}
            times = timing.time_calls(runners, rounds=_ROUNDS.value)
            work, unit = WORK[row]
            result = {side: timing.summary(times[side], work, unit) for side in runners}
            if torch:
                result["jax_over_torch"] = timing.ratio(times, "jax", "torch")
            rows[f"{name}/{row}"] = result
            print(f"{name} {row}: " + ", ".join(f"{s} {result[s][unit]:.1f} {unit}" for s in runners)
                  + (f", ratio {result['jax_over_torch']['ratio']:.2f} ({result['jax_over_torch']['min']:.2f}-"
                     f"{result['jax_over_torch']['max']:.2f})" if torch else ""))
    return rows


def loop_gradients(torch) -> dict:
    """3 input gradients of each model at batch 16 in a fori_loop (custom-VJP conv, XLA conv) and unrolled."""
    del torch
    x = jnp.asarray(np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32))
    y = jnp.zeros(16, jnp.int32)
    rows = {}
    for name in _MODELS.value:
        for variant, conv in (("custom_vjp_in_loop", None), ("xla_conv_in_loop", "xla"), ("unrolled", None)):
            model = get_model(name, 10, dataset="cifar10", conv=conv)
            v = jax.jit(lambda k, model=model: model.init(k, x[:1], train=False))(jax.random.key(0))
            grad = jax.grad(lambda xx, model=model: -jnp.sum(jax.nn.log_softmax(model.apply(v, xx)) * jax.nn.one_hot(
                y, 10)))
            if variant == "unrolled":
                fn = jax.jit(lambda xx, grad=grad: functools.reduce(lambda a, _: a + 1e-3 * grad(a), range(3), xx))
            else:
                fn = jax.jit(lambda xx, grad=grad: jax.lax.fori_loop(0, 3, lambda _, a: a + 1e-3 * grad(a), xx))
            times = timing.time_calls({variant: lambda fn=fn: jax.block_until_ready(fn(x))}, rounds=_ROUNDS.value)
            rows[f"{name}/{variant}"] = {"seconds": round(float(np.median(times[variant]["wall"])), 3)}
            print(f"{name} {variant}: {rows[f'{name}/{variant}']['seconds']:.3f} s for 3 input gradients")
    return rows


def conv_gradients(torch) -> dict:
    """Weight-gradient GFLOP/s of 3x3 stride-1 convolutions of a CIFAR ResNet at batch 64, XLA vs PyTorch."""
    rows = {}
    for size, channels in ((32, 16), (16, 32), (8, 64)):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, size, size, channels)).astype(np.float32)
        w = rng.standard_normal((3, 3, channels, channels)).astype(np.float32)
        conv = lambda xx, ww: jax.lax.conv_general_dilated(xx, ww, (1, 1), "SAME",  # noqa: E731
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        g = np.ones((64, size, size, channels), np.float32)
        wgrad = jax.jit(lambda xx, gg: jax.vjp(lambda ww: conv(xx, ww), w)[1](gg)[0])
        runners = {"jax": lambda: jax.block_until_ready(wgrad(x, g))}
        if torch:
            tx, tg = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(g.transpose(0, 3, 1, 2).copy())
            runners["torch"] = lambda: torch.nn.grad.conv2d_weight(tx, (channels, channels, 3, 3), tg, padding=1)
        flops = 2 * 64 * size * size * channels * channels * 9
        times = timing.time_calls(runners, rounds=_ROUNDS.value)
        rows[f"{size}x{size}x{channels}"] = {s: timing.summary(times[s], flops / 1e9, "gflops") for s in runners}
        print(f"{size}x{size}, {channels} channels: " + ", ".join(
            f"{s} {rows[f'{size}x{size}x{channels}'][s]['gflops']:.1f} GFLOP/s" for s in runners))
    return rows


def main(argv):
    del argv
    torch = None
    if not _NO_TORCH.value:
        try:
            import torch
            torch.set_num_threads(timing.cores())
        except ImportError:
            print("PyTorch is not installed: timing smoothjax only (pip install torch for the comparison)")
    t0 = time.perf_counter()
    rows = {"compare": compare, "loop_gradients": loop_gradients, "conv_gradients": conv_gradients}[
        _EXPERIMENT.value](torch)
    timing.write_results({"benchmark": f"cpu_vs_torch_{_EXPERIMENT.value}", "rows": rows,
                          "torch": getattr(torch, "__version__", None), "machine": timing.machine_info(),
                          "seconds": round(time.perf_counter() - t0)},
                         _OUT.value or timing.HERE / "results" / f"cpu_vs_torch_{_EXPERIMENT.value}.json")


if __name__ == "__main__":
    app.run(main)
