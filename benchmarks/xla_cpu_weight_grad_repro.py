"""Minimal reproduction (plain JAX, no smoothjax): XLA:CPU convolution gradients against PyTorch on the same CPU.

Run (about 1 minute; PyTorch optional)::

    python benchmarks/xla_cpu_weight_grad_repro.py
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/xla_cpu_weight_grad_repro.py   # YNN off

For the convolution shapes of a CIFAR ResNet at batch 64 (3x3, stride 1 and 2, 16-64 channels) it times, with
``jax.jit`` and ``block_until_ready`` (median of 7 calls after one warm-up):

1. the forward convolution, its input gradient and its weight gradient (``jax.vjp`` of ``lax.conv_general_dilated``);
   XLA:CPU emits the weight gradient as a convolution whose window is the whole activation (e.g. 32x32, output 3x3),
   which the ynn/xnn kernels run on one thread: "cpu" (this process's CPU seconds / wall seconds) stays near 1.0 on 2
   cores, and GFLOP/s falls far below the forward convolution's;
2. the input gradient inside a ``lax.fori_loop`` body against the same code unrolled: XLA:CPU leaves the transposed
   convolution of the loop body non-canonical (``conv_canonicalization`` only visits the entry computation), ~8x
   slower per iteration (the reason for smoothjax's unrolled attack loops and its custom-VJP convolution);
3. the same weight and input gradients in PyTorch (``torch.nn.grad.conv2d_weight`` / ``conv2d_input``, oneDNN).
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
SHAPES = [  # (batch, size, in channels, out channels, stride)
    (64, 32, 16, 16, 1), (64, 16, 32, 32, 1), (64, 8, 64, 64, 1), (64, 32, 16, 32, 2)]


def timeit(fn, *args, reps: int = 7) -> tuple[float, float]:
    """(median wall ms, median CPU seconds per wall second) of ``fn(*args)`` after one warm-up call."""
    def call():
        out = fn(*args)
        if isinstance(out, jax.Array):
            out.block_until_ready()

    call()
    walls, shares = [], []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        call()
        wall = time.perf_counter() - w0
        walls.append(wall)
        shares.append((time.process_time() - c0) / wall)
    return 1e3 * statistics.median(walls), statistics.median(shares)


def main() -> None:
    print(f"jax {jax.__version__}, {os.cpu_count()} cpus, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
    except ImportError:
        torch = None
    for n, hw, ci, co, s in SHAPES:
        x = jax.random.normal(jax.random.key(0), (n, hw, hw, ci))
        w = jax.random.normal(jax.random.key(1), (3, 3, ci, co)) * 0.1
        g = jax.random.normal(jax.random.key(2), (n, hw // s, hw // s, co))
        conv = lambda x, w: lax.conv_general_dilated(x, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=DN)
        flops = 2 * n * (hw // s) ** 2 * co * ci * 9
        fns = {
            "forward": jax.jit(conv),
            "input grad": jax.jit(lambda x, w: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
            "weight grad": jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
            "input grad x4 fori_loop": jax.jit(lambda x, w: lax.fori_loop(
                0, 4, lambda i, a: a + jax.vjp(lambda x: conv(x, w + i), x)[1](g)[0], jnp.zeros_like(x))),
            "input grad x4 unrolled": jax.jit(lambda x, w: lax.fori_loop(
                0, 4, lambda i, a: a + jax.vjp(lambda x: conv(x, w + i), x)[1](g)[0], jnp.zeros_like(x),
                unroll=True)),
        }
        print(f"\n{n}x{hw}x{hw}x{ci} -> {co}, 3x3, stride {s}: {flops / 1e6:.0f} MFLOP per convolution")
        for name, fn in fns.items():
            ms, share = timeit(fn, x, w)
            per = ms / 4 if "x4" in name else ms
            print(f"  jax   {name:24s} {ms:8.2f} ms  {flops / per / 1e6:6.1f} GFLOP/s  cpu {share:.2f}")
        if torch is not None:
            xt, gt = torch.randn(n, ci, hw, hw), torch.randn(n, co, hw // s, hw // s)
            wt = torch.randn(co, ci, 3, 3)
            for name, fn in (("weight grad", lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, gt, s, 1)),
                             ("input grad", lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gt, s, 1))):
                ms, share = timeit(fn)
                print(f"  torch {name:24s} {ms:8.2f} ms  {flops / ms / 1e6:6.1f} GFLOP/s  cpu {share:.2f}")


if __name__ == "__main__":
    main()
