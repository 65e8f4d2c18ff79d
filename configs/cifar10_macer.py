"""MACER on CIFAR-10 (Zhai et al. 2020): the published ResNet-110 recipe, and a CPU fine-tune.

  python train.py --config=configs/cifar10_macer.py:sigma=0.25 --workdir=runs/c10_macer_s025
  python certify.py --config=configs/cifar10_macer.py:sigma=0.25 --workdir=runs/c10_macer_s025 \\
      --config.certify.n=100000

Argument after ':' (comma-separated ``key=value``, all optional): ``sigma`` (0.25, 0.5 or 1.0; default 0.25),
``lbd`` (lambda; default the paper's: 12 at sigma 0.25 and 0.5, 4 at sigma 1.0), ``k`` (noise draws; default 16),
``cpu=1`` (the CPU-scale fine-tune below).

Published recipe (the paper's Section 4.1 and the released ``main.py``): ResNet-110, 440 epochs of batch 64, SGD lr
0.01 divided by 10 at epochs 200 and 400, momentum 0.9, weight decay 5e-4, random crop + flip, k = 16, beta = 16,
gamma = 8. Published average certified radius (MACER README, Performance table; 500 test images, n = 100,000, alpha
= 0.001): 0.556 / 0.726 / 0.792 at sigma 0.25 / 0.5 / 1.0 (Cohen et al. under the same protocol: 0.416 / 0.491 /
0.458). One step runs the model on 64 x 16 = 1,024 noisy rows.

CPU scale (``cpu=1``, for results/cifar10; not run yet: the runs are queued by the lead). Fine-tunes the Gaussian
ResNet-20 of results/cifar10 (configs/cifar10_cpu.py, 3,900 steps; it has sigma 0.25 and 0.50) with the MACER loss
for 800 steps of 64 images x 16 noise draws (about one epoch), lr 0.01 cosine, then certifies with that run's
protocol (every 20th test image, n = 10,000)::

  python train.py --config=configs/cifar10_macer.py:sigma=0.25,cpu=1 \\
      --workdir=results/cifar10/resnet20_macer_s0.25 --config.data_path=../shared/data/cifar10-jpeg.zip
  python certify.py --config=configs/cifar10_macer.py:sigma=0.25,cpu=1 \\
      --workdir=results/cifar10/resnet20_macer_s0.25 --config.dataset=cifar10 \\
      --config.data_path=../shared/data/cifar10-test.npz

Run time, estimated from throughput (no whole run yet): a step sees 1,024 rows of 32x32x3, four Gaussian steps of
batch 256 at about 250 images/s on 2 idle cores (benchmarks/results/train_throughput.json), so about 4 s a step and
55 minutes for the 800 steps on an idle machine, 2 to 4 hours on a shared one. Certifying the 500 images takes 1 hour
idle to 4 hours shared (7 / 26 s per image, configs/cifar10_cpu.py). docs/training.md (cost per step) tells how both
commands were checked.
"""

from smoothjax.jobs.defaults import cohen_cifar10, cpu_cifar10, parse_args

GAUSSIAN_RUN = "results/cifar10/resnet20_gaussian_s{sigma:.2f}"  # configs/cifar10_cpu.py's workdir per sigma
PAPER_LAMBDA = {0.25: 12.0, 0.5: 12.0, 1.0: 4.0}


def get_config(arg: str = "sigma=0.25"):
    args = parse_args(arg, {"sigma": float, "lbd": float, "k": int, "cpu": int})
    sigma = args.get("sigma", 0.25)
    c = (cpu_cifar10 if args.get("cpu") else cohen_cifar10)(f"sigma={sigma}")  # ResNet-20 / ResNet-110 recipe
    c.loss = "macer"
    c.macer.lbd = args.get("lbd", PAPER_LAMBDA.get(sigma, 12.0))
    c.macer.num_noise_vec = args.get("k", 16)
    c.macer.beta = 16.0
    c.macer.gamma = 8.0
    c.batch_size = 64
    c.learning_rate = 0.01
    if args.get("cpu"):  # ResNet-20 fine-tune of the Gaussian run (data, model and certification of cifar10_cpu)
        c.init_from = GAUSSIAN_RUN.format(sigma=sigma)
        c.total_steps = 800
        c.lr_schedule = "cosine"
        c.log_every_steps = 50
        c.checkpoint_every_steps = 100
        return c.lock()
    c.num_epochs = 440.0
    c.weight_decay = 5e-4
    c.lr_schedule = "multistep"
    c.lr_milestones = (200, 400)
    c.certify.skip = 20
    c.certify.batch_size = 400
    return c.lock()
