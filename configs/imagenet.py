"""Cohen et al. (2019) ImageNet recipe: ResNet-50 trained with Gaussian noise augmentation at noise level sigma.

  python train.py --config=configs/imagenet.py:sigma=0.50 --workdir=runs/imagenet_s050 --config.data_dir=/data/tfds

Argument: ``sigma=<float>`` (the paper: 0.25, 0.50, 1.00). Recipe: SGD momentum 0.9, weight decay 1e-4, lr 0.1
divided by 10 every 30 epochs, 90 epochs, batch 256 (400 in some runs), random-resized crop 224 + flip.
Data: tfds ``imagenet2012`` prepared in data_dir (manual download; nothing is fetched at run time).

Expected (Cohen et al. 2019, n=100,000, alpha=0.001, 500 test images): certified accuracy at radius 0.5 / 1.0 /
1.5 / 2.0 / 2.5 / 3.0 of about 0.49 / 0.00 for sigma=0.25, 0.46 / 0.37 / 0.29 / 0.00 for sigma=0.50,
0.38 / 0.33 / 0.26 / 0.19 / 0.15 / 0.12 for sigma=1.00.
"""

from smoothjax.jobs.defaults import base_config, parse_sigma


def get_config(arg: str = "sigma=0.25"):
    c = base_config()
    c.model = "resnet50"
    c.dataset = "imagenet"
    c.dataset_stats = "imagenet"
    c.eval_split = "validation"
    c.augment = "imagenet"
    c.sigma = parse_sigma(arg).get("sigma", 0.25)
    c.eval_batch_size = 400
    c.checkpoint_every_steps = 2000
    return c.lock()
