"""SIAM on CIFAR-100: the CIFAR-10 recipe of ``configs/siam_cifar10.py`` (read it for units and commands) with 100
classes and CIFAR-100 statistics.

  python train.py --config=configs/siam_cifar100.py:noise=cpni --workdir=runs/siam_c100_cpni
  python evaluate.py --config=configs/siam_cifar100.py:noise=cpni --workdir=runs/siam_c100_cpni \
      --config.data_path=<cifar100-test.npz> --config.evaluate.m_test=1,8,64 \
      --config.evaluate.out=runs/siam_c100_cpni/eval

Input noise: the reference's normalised 0.25 times its normalisation std (0.247, 0.243, 0.262) per channel (the
reference normalises CIFAR-100 with the CIFAR-10 statistics).
Expected (paper, CIFAR-100, ResNet-20, eps = 8/255): PGD accuracy of the smoothed model in the low-to-mid 30s
(%), above the PNI baseline; clean accuracy around 55 %. Numbers are the paper's, not reproduced here.
"""

from smoothjax.jobs.defaults import siam_config


def get_config(arg: str = "noise=cpni"):
    return siam_config("cifar100", arg).lock()
