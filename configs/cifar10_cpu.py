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

Run time here: about 65 minutes at 1 step/s (2 cores, no other load); 2 hours when the machine is shared.
Reached (results/cifar10/README.md has every row, the commands and Cohen et al.'s table beside them): sigma 0.25:
base classifier accuracy 0.638 clean / 0.709 noisy on the JPEG test images; see the results page for the
certified accuracies on the lossless test set.
"""

from smoothjax.jobs.defaults import cohen_cifar10


def get_config(arg: str = "sigma=0.25"):
    c = cohen_cifar10(arg)  # Cohen et al.'s recipe (configs/cifar10.py); what follows scales it down
    c.model = "cifar_resnet20"
    c.dataset = "image_folder"
    c.num_epochs = 20.0
    c.lr_schedule = "cosine"
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 1
    c.log_every_steps = 195  # once an epoch
    c.certify.n = 10_000
    c.certify.skip = 20
    c.certify.batch_size = 400  # about 25 % faster than 1,000 on 2 cores
    return c.lock()
