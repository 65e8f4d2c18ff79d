"""Cohen et al. (2019) CIFAR-10 recipe: ResNet-110 trained with Gaussian noise augmentation at noise level sigma.

  python train.py --config=configs/cifar10.py:sigma=0.25 --workdir=runs/cifar10_s025

The argument after ':' is ``sigma=<float>`` (the paper trains 0.12, 0.25, 0.50, 1.00). Recipe: SGD momentum 0.9,
weight decay 1e-4, lr 0.1 divided by 10 every 30 epochs, 90 epochs, batch 256, random crop + flip.

Data: by default tfds ``cifar10`` prepared in ``--config.data_dir`` (``tfds build cifar10``; nothing is downloaded at
run time). On machines without it, a folder or .zip of ``<split>/<class>/*.png|jpg`` works too:
``--config.dataset=image_folder --config.data_path=/path/to/cifar10.zip`` (stats stay CIFAR-10's).

Expected (Cohen et al. 2019, Table / Figure for CIFAR-10; certified with n=100,000, alpha=0.001 on the test
set): certified accuracy at radius 0.25 / 0.5 / 0.75 / 1.0 of about 0.60 / 0.43 / 0.27 / 0.00 for sigma=0.25,
0.55 / 0.41 / 0.32 / 0.23 for sigma=0.50, and clean (noisy) top-1 accuracy of the base model around 0.8.
"""

from smoothjax.jobs.defaults import cohen_cifar10, parse_sigma

_parse = parse_sigma  # the name configs/imagenet.py used before the defaults moved into the package


def get_config(arg: str = "sigma=0.25"):
    return cohen_cifar10(arg).lock()
