"""SmoothAdv on ImageNet (Salman et al. 2019): ResNet-50 trained on adversarial examples of its smoothed classifier;
and the ImageNet 32x32 pre-training run for the CIFAR-10 fine-tuning recipe.

  python train.py --workdir=runs/in_pgd1_eps1_s050 --config.data_dir=/data/tfds \\
      --config=configs/imagenet_smoothadv.py:sigma=0.5,attack=pgd,eps256=255,steps=1
  python train.py --workdir=runs/in_ddn2_eps4_s025 --config.data_dir=/data/tfds \\
      --config=configs/imagenet_smoothadv.py:sigma=0.25,attack=ddn,eps=4.0,steps=2
  python certify.py --workdir=runs/in_pgd1_eps1_s050 --config=configs/imagenet_smoothadv.py:sigma=0.5 \\
      --config.data_dir=/data/tfds --config.certify.skip=100 --config.certify.batch_size=400
  # Pre-training for CIFAR-10 (then configs/cifar10_smoothadv.py:finetune=runs/in32_pgd2,...):
  python train.py --workdir=runs/in32_pgd2 --config=configs/imagenet_smoothadv.py:pretrain32=1,sigma=0.25,steps=2

Arguments as in configs/cifar10_smoothadv.py (sigma, attack, eps or eps256 = N/256, steps, m, multi, nograd,
warmup), plus ``pretrain32=1``. Paper grid: sigma in {0.25, 0.50, 1.00}, eps in {0.5, 1, 2, 4}
(the reference's 127, 255, 512, 1024), SmoothAdv_PGD with 1 step or SmoothAdv_DDN with 2 steps, m = 1.

Recipe: the reference ``train_pgd.py`` defaults, which the published ImageNet commands are not listed with:
SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 every 30 epochs, 90 epochs, batch 256, warm-up 1,
random-resized crop 224 + flip; data: tfds ``imagenet2012`` prepared in data_dir. ``pretrain32=1``: the CIFAR
ResNet-110 on ImageNet 32x32 (1000 classes, random crop + flip, CIFAR-10 normalisation as in the reference's
fine-tuning) with the CIFAR recipe (150 epochs, lr step 50, warm-up 10); dataset ``imagenet32`` (tfds
``imagenet_resized/32x32``), or --config.dataset=image_folder --config.data_path=<folder or .zip of 32x32 images>.

Published (certified top-1 on 500 validation images, n = 100,000, alpha = 0.001; the best model of the grid at each
radius, the repository's analysis/latex/our_imagenet_certified_outer_envelop) at radius 0.5 / 1.0 / 1.5 / 2.0 /
2.5 / 3.0 / 3.5: 0.56 / 0.43 / 0.37 / 0.27 / 0.25 / 0.20 / 0.16 (Cohen et al.: 0.49 / 0.37 / 0.29 / 0.19 / 0.15 /
0.12 / 0.09). Single models: PGD 1 step, eps 255/256, sigma 0.50 gives 0.433 at radius 1.0; PGD 1 step,
eps 512/256, sigma 1.00 gives 0.269 at radius 2.0.
"""

from smoothjax.jobs.defaults import apply_smoothadv, base_config, parse_smoothadv as parse


def get_config(arg: str = ""):
    args = parse(arg)
    for key in ("finetune", "teacher", "unlabelled", "weight"):
        if key in args:
            raise ValueError(f"config argument {key} belongs to configs/cifar10_smoothadv.py")
    c = base_config()
    if args.get("pretrain32"):
        c.model = "cifar_resnet110"
        c.dataset = "imagenet32"
        c.dataset_stats = "cifar10"
        c.num_classes = 1000
        c.augment = "cifar"
        c.eval_split = "validation"
        c.num_epochs = 150.0
        c.lr_step_epochs = 50
        apply_smoothadv(c, args, default_warmup=10)
    else:
        c.model = "resnet50"
        c.dataset = "imagenet"
        c.dataset_stats = "imagenet"
        c.eval_split = "validation"
        c.augment = "imagenet"
        c.eval_batch_size = 400
        c.checkpoint_every_steps = 2000
        apply_smoothadv(c, args, default_warmup=1)
    c.certify.split = "validation"
    c.certify.skip = 100
    c.certify.batch_size = 400
    return c.lock()
