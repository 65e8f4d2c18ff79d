"""CIFAR-10 at CPU scale: ResNet-20 with Gaussian noise augmentation, 20 epochs, for results/cifar10.

  python train.py --config=configs/cifar10_cpu.py:sigma=0.25 --workdir=results/cifar10/resnet20_gaussian_s0.25 \\
      --config.data_path=../shared/data/cifar10-jpeg.zip
  python certify.py --config=configs/cifar10_cpu.py:sigma=0.25 --workdir=results/cifar10/resnet20_gaussian_s0.25 \\
      --config.dataset=cifar10 --config.data_path=../shared/data/cifar10-test.npz

The argument after ':' is ``sigma=<float>`` (results/cifar10 has 0.25 and 0.50). Training reads a folder or .zip
of ``<split>/<class>/*.jpg|png`` (``image_folder``); the only CIFAR-10 training images on our machines are the
quality-75 JPEGs of ``cifar10-jpeg.zip``, so every number below comes from a model trained on JPEG images.
Certification reads the lossless test set (``--config.dataset=cifar10`` with the ``.npz``), Cohen et al.'s protocol:
every 20th test image (500), n0 = 100, n = 10,000 (the paper: 100,000), alpha = 0.001.

Recipe: Cohen et al.'s, scaled down to fit about an hour on 2 CPU cores: ResNet-20 (272,474 parameters) instead
of ResNet-110, 20 epochs (3,900 steps of batch 256) instead of 90, cosine learning rate from 0.1 instead of steps;
SGD momentum 0.9, weight decay 1e-4, random crop + flip, CIFAR-10 mean/std normalisation inside the model.

Run time here: about 65 minutes at 1 step/s (2 cores, no other load); 2 to 4 hours when the machine is shared.
Certification: about 7 s per image at n = 10,000 on 2 idle cores (12 to 17 s beside a low-priority job, 26 s when
shared).
Reached (results/cifar10/README.md has every row, the commands and Cohen et al.'s table beside them), sigma 0.25:
base classifier accuracy 0.638 clean / 0.709 noisy on the JPEG test images; certified accuracy on the 500 lossless
test images 0.72 / 0.55 / 0.37 / 0.19 / 0.00 at r = 0 / 0.25 / 0.5 / 0.75 / 1.0, ACR 0.354 (Cohen et al.'s
ResNet-110, 90 epochs, n = 100,000: 0.75 / 0.60 / 0.43 / 0.27 / 0.00, ACR 0.429).
Sigma 0.5: base classifier accuracy 0.512 clean / 0.592 noisy on the JPEG test images; certified accuracy 0.60 /
0.48 / 0.37 / 0.27 / 0.19 at r = 0 / 0.25 / 0.5 / 0.75 / 1.0, ACR 0.447 (Cohen et al.: 0.65 / 0.55 / 0.41 / 0.32 /
0.23, ACR 0.538).
"""

from smoothjax.jobs.defaults import cpu_cifar10


def get_config(arg: str = "sigma=0.25"):
    return cpu_cifar10(arg).lock()  # Cohen et al.'s recipe scaled down: smoothjax/jobs/defaults.py
