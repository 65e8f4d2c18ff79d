"""SmoothAdv on CIFAR-10 (Salman et al. 2019): ResNet-110 trained on adversarial examples of its smoothed classifier.

  python train.py --workdir=runs/c10_pgd10_m4_eps050_s025 \\
      --config=configs/cifar10_smoothadv.py:sigma=0.25,attack=pgd,eps=0.5,steps=10,m=4,multi=1
  python train.py --workdir=runs/c10_ddn4_eps1_s050 \\
      --config=configs/cifar10_smoothadv.py:sigma=0.5,attack=ddn,eps256=255,steps=4
  python certify.py --workdir=runs/c10_pgd10_m4_eps050_s025 --config=configs/cifar10_smoothadv.py:sigma=0.25 \\
      --config.certify.skip=20 --config.certify.batch_size=400

Argument after ':' (comma-separated ``key=value``; all optional):
  sigma      noise level (paper grid 0.12, 0.25, 0.50, 1.00; default 0.25)
  attack     pgd | ddn | none (default pgd)
  eps        L2 budget in pixel units (paper grid 0.25, 0.5, 1.0, 2.0), or
  eps256     the reference's ``--epsilon`` number N, meaning N/256 (its grid 64, 127, 255, 512)
  steps      attack steps T (paper grid 1, 2, 4, 6, 8, 10; default 1)
  m          noise draws per image for the attack, m_train (1, 2, 4, 8; default 1)
  multi      1 = train on all m noisy copies (``--train-multi-noise``); the batch becomes 256 // m so that each step
             sees the reference's estimator (B/m images x m draws) and as many steps per epoch (smoothadv.loss)
  nograd     1 = gradient-free PGD estimate (``--no-grad-attack``, m >= 2)
  warmup     epochs of linear epsilon warm-up (default 10)
  finetune   a workdir of an ImageNet-32 SmoothAdv run (configs/imagenet_smoothadv.py:pretrain32=1): fine-tune it
             (new 10-way head) at lr 0.001 for 30 epochs, the paper's pre-training recipe
  teacher    a workdir whose model pseudo-labels ``unlabelled`` (self-training); ``weight`` = its loss weight
             (the paper used 0.5 and 1.0); ``unlabelled`` = a dataset name (e.g. image_folder, with
             --config.self_training_data_path=...). The paper used Carmon et al.'s 500K Tiny Images.

Recipe (the reference's ``train_pgd.py`` commands; inputs centred by the per-channel mean only, as its
``InputCenterLayer``): SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10
every 50 epochs, 150 epochs, batch 256, epsilon warm-up over 10 epochs, random crop + flip; DDN uses gamma 0.05 and
starts each attack at norm epsilon. Data as in configs/cifar10.py (tfds ``cifar10`` in --config.data_dir, or
--config.dataset=image_folder --config.data_path=...).

Published (certified top-1 on 500 test images, n = 100,000, alpha = 0.001; the best model of the grid at each radius,
the repository's analysis/latex/*_outer_envelop) at radius 0.25 / 0.5 / 0.75 / 1.0 / 1.25 / 1.5 / 1.75 / 2.0 / 2.25:
  SmoothAdv:                 0.74 / 0.57 / 0.48 / 0.38 / 0.33 / 0.29 / 0.24 / 0.19 / 0.17
  + ImageNet-32 pre-training 0.80 / 0.63 / 0.52 / 0.39 / 0.36 / 0.30 / 0.25 / 0.20 / 0.17
  + self-training            0.80 / 0.63 / 0.53 / 0.39 / 0.36 / 0.32 / 0.25 / 0.20 / 0.18
  (Cohen et al., for comparison: 0.60 / 0.43 / 0.32 / 0.23 / 0.17 / 0.14 / 0.12 / 0.10 / 0.08)
Single models: e.g. PGD, T=10, m=4 multi, eps=64/256, sigma=0.12 is the best at radius 0.25 (0.736); PGD, T=2,
m=8 multi, eps=512/256, sigma=0.50 at radius 1.0 (0.376).
"""

from smoothjax.jobs.defaults import apply_smoothadv, base_config, parse_smoothadv as parse

__all__ = ["apply_smoothadv", "get_config", "parse"]


def get_config(arg: str = ""):
    args = parse(arg)
    if "pretrain32" in args:
        raise ValueError("config argument pretrain32 belongs to configs/imagenet_smoothadv.py")
    c = base_config()
    c.model = "cifar_resnet110"
    c.dataset = "cifar10"
    c.dataset_stats = "cifar10"
    c.augment = "cifar"
    c.num_epochs = 150.0
    c.lr_step_epochs = 50
    apply_smoothadv(c, args, default_warmup=10)
    if "finetune" in args:
        c.init_from = args["finetune"]
        c.learning_rate = 0.001
        c.num_epochs = 30.0
        c.lr_schedule = "constant"
    if "teacher" in args:
        c.self_training_teacher = args["teacher"]
        c.self_training_dataset = args.get("unlabelled", "image_folder")
        c.self_training_weight = args.get("weight", 1.0)
    c.certify.skip = 20
    c.certify.batch_size = 400
    return c.lock()
