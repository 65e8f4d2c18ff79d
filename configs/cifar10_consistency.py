"""Consistency regularization on CIFAR-10 (Jeong & Shin 2020): the published ResNet-110 recipe, and a CPU fine-tune.

  python train.py --config=configs/cifar10_consistency.py:sigma=0.25 --workdir=runs/c10_consistency_s025
  python certify.py --config=configs/cifar10_consistency.py:sigma=0.25 --workdir=runs/c10_consistency_s025 \\
      --config.certify.n=100000

Argument after ':' (comma-separated ``key=value``, all optional): ``sigma`` (0.25, 0.5 or 1.0; default 0.25),
``lbd`` (lambda; default 10, the released logs' value at every sigma), ``m`` (noise draws; default 2), ``cpu=1``
(the CPU-scale fine-tune below).

Published recipe (the released ``code/train_consistency.py`` defaults and ``EXPERIMENTS.MD``): ResNet-110, 150 epochs,
SGD lr 0.1 divided by 10 every 50 epochs, momentum 0.9, weight decay 1e-4, random crop + flip, m = 2, lambda = 10,
eta = 0.5. The reference splits each batch of 256 images into m mini-batches of 256/m and takes one step per mini-batch
on its m noisy copies (256 rows), so here ``batch_size = 256 // m`` (as many steps per epoch and the same estimator).
Published (the released certification logs of the ``lbd_10.0/eta_0.5/cifar_resnet110`` runs, 500 test images, n =
100,000, alpha = 0.001): average certified radius 0.544 / 0.720 / 0.756 at sigma 0.25 / 0.5 / 1.0 (Cohen et al.'s
Gaussian augmentation under the same protocol: 0.416 / 0.491 / 0.458, MACER's README).

CPU scale (``cpu=1``, for results/cifar10; not run yet: the runs are queued by the lead). Fine-tunes the Gaussian
ResNet-20 of results/cifar10 (configs/cifar10_cpu.py, 3,900 steps; it has sigma 0.25 and 0.50) with the Consistency
loss for 2,400 steps of 128 images x 2 noise draws (about 6 epochs), lr 0.01 cosine, then certifies with that run's
protocol (every 20th test image, n = 10,000)::

  python train.py --config=configs/cifar10_consistency.py:sigma=0.25,cpu=1 \\
      --workdir=results/cifar10/resnet20_consistency_s0.25 --config.data_path=../shared/data/cifar10-jpeg.zip
  python certify.py --config=configs/cifar10_consistency.py:sigma=0.25,cpu=1 \\
      --workdir=results/cifar10/resnet20_consistency_s0.25 --config.dataset=cifar10 \\
      --config.data_path=../shared/data/cifar10-test.npz

Run time, estimated from throughput (no whole run yet): 256 rows a step, one Gaussian step of batch 256, about 1 s
on 2 idle cores at ResNet-20's 250 images/s (benchmarks/results/train_throughput.json): 40-45 minutes for the 2,400
steps idle, 1.5 to 3 hours when the machine is shared; then 1 to 4 hours to certify the 500 images (7 s per image
idle, 26 s shared, as configs/cifar10_cpu.py). How both commands were checked: docs/training.md, cost per step.
"""

from smoothjax.jobs.defaults import cohen_cifar10, cpu_cifar10, parse_args

GAUSSIAN_RUN = "results/cifar10/resnet20_gaussian_s{sigma:.2f}"  # configs/cifar10_cpu.py's workdir per sigma


def get_config(arg: str = "sigma=0.25"):
    args = parse_args(arg, {"sigma": float, "lbd": float, "m": int, "cpu": int})
    sigma = args.get("sigma", 0.25)
    c = (cpu_cifar10 if args.get("cpu") else cohen_cifar10)(f"sigma={sigma}")  # ResNet-20 / ResNet-110 recipe
    c.loss = "consistency"
    c.consistency.lbd = args.get("lbd", 10.0)
    c.consistency.num_noise_vec = args.get("m", 2)
    c.consistency.eta = 0.5
    c.batch_size = max(1, 256 // c.consistency.num_noise_vec)
    if args.get("cpu"):  # ResNet-20 fine-tune of the Gaussian run (data, model and certification of cifar10_cpu)
        c.init_from = GAUSSIAN_RUN.format(sigma=sigma)
        c.total_steps = 2400
        c.learning_rate = 0.01
        c.lr_schedule = "cosine"
        c.log_every_steps = 100
        return c.lock()
    c.num_epochs = 150.0
    c.lr_step_epochs = 50
    c.certify.skip = 20
    c.certify.batch_size = 400
    return c.lock()
