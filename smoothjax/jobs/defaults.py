"""The defaults of every experiment config, in the package: ``base_config`` and the recipes ``configs/*.py`` share.

``configs/*.py`` import only from here (not from each other), so each loads by path from any directory, e.g.
``ml_collections.config_flags`` with ``--config=/abs/path/configs/digits.py`` or ``config_dict`` loading from another
working directory. Every ``get_config()`` returns its config locked: a typo (``c.sigmaa = 0.5``) raises instead of
adding a field no job reads.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a name from smoothjax.models.MODEL_NAMES; model_kwargs go to its constructor (e.g. width).
    c.model = "cifar_resnet110"
    c.model_kwargs = ml_collections.ConfigDict()
    c.normalization = "mean_std"  # mean_std | mean (SmoothAdv's InputCenterLayer) | none
    # Data: a name from smoothjax.data.SOURCE_NAMES; data_path for .npz/.zip/folder sources.
    c.dataset = "cifar10"
    c.dataset_stats = ""  # whose mean/std the model normalises with ('' = dataset)
    c.data_dir = ""
    c.data_path = ""
    c.train_split = "train"
    c.eval_split = "test"  # '' = no evaluation
    c.augment = "none"  # none | cifar | imagenet
    c.num_classes = 0  # 0 = from the data source
    # Randomized smoothing: noise level in pixel units (images in [0, 1]).
    c.sigma = 0.25
    c.loss = "gaussian"  # gaussian | smoothadv | siam | consistency | macer (smoothjax.jobs.train.LOSSES)
    # Compute dtype of the model in training, certification and attacks: float32 | bfloat16 (GPU/TPU) | float16. Noise
    # is drawn and added in float32 and parameters and batch-norm statistics stay float32 (docs/training.md).
    c.dtype = "float32"
    # SmoothAdv (loss='smoothadv', Salman et al. 2019): attack the soft smoothed classifier, train on x_adv + noise.
    c.smoothadv = ml_collections.ConfigDict({
        "attack": "pgd",  # none | pgd | ddn
        "epsilon": 0.25,  # L2 budget in pixel units (the reference's --epsilon 64 = 64/256)
        "num_steps": 1,  # attack steps T
        "num_noise_vec": 1,  # m, noise draws per image for the attack
        "train_multi_noise": False,  # cross-entropy on all m noisy copies (else on the first)
        "no_grad_attack": False,  # PGD with the gradient-free estimate (m >= 2)
        "warmup": 1,  # epochs of linear epsilon warm-up
        "ddn_gamma": 0.05})
    # SIAM (loss='siam', Nemcovsky et al.): L-inf PGD / EPGD adversarial training of a stochastic model; eval_* is the
    # smoothed classifier the training loop evaluates (and keep_best_by selects on) when the model is stochastic.
    c.siam = ml_collections.ConfigDict({
        "attack": "pgd",  # none | pgd
        "epsilon": 8 / 255,  # L-inf budget in pixel units
        "num_steps": 7,
        "step_size": 0.0,  # 0 = epsilon / 4
        "m_train": 1,  # stochastic passes per attack step: 1 = PGD, 8 = the paper's EPGD
        "adv_weight": 0.5,  # loss = adv_weight * CE(x_adv) + (1 - adv_weight) * CE(x)
        "pass_loop": "auto",  # auto | vmap | scan: how EPGD's passes run
        "eval_num_samples": 8, "eval_mode": "vote"})
    # Consistency (loss='consistency', Jeong & Shin 2020): CE on m noisy copies + lbd * mean KL(mean prediction || copy)
    # + eta * entropy(mean prediction). Published: m = 2, eta = 0.5, lbd = 10 (CIFAR-10 logs) or 20 (MNIST).
    c.consistency = ml_collections.ConfigDict({"num_noise_vec": 2, "lbd": 10.0, "eta": 0.5})
    # MACER (loss='macer', Zhai et al. 2020): CE of the soft smoothed classifier over k draws + lbd * hinge on its
    # certified radius (inverse temperature beta, hinge gamma). Published: k = 16, beta = 16, gamma = 8, lbd = 12
    # (CIFAR-10, sigma 0.25 / 0.5) or 4 (sigma 1.0).
    # deferred_epochs: lambda = 0 for the first epochs (Jeong & Shin's --deferred MACER baseline; 0 = the paper's).
    c.macer = ml_collections.ConfigDict({"num_noise_vec": 16, "lbd": 12.0, "beta": 16.0, "gamma": 8.0,
                                         "deferred_epochs": 0})
    # Fine-tuning: a trained run's workdir to start from (new classifier head when the class count differs).
    c.init_from = ""
    # Self-training: a teacher run's workdir pseudo-labels self_training_dataset; its batches alternate with
    # labelled ones and their loss is multiplied by self_training_weight.
    c.self_training_teacher = ""
    c.self_training_dataset = ""
    c.self_training_split = "train"
    c.self_training_data_path = ""
    c.self_training_weight = 1.0
    # Optimisation (Cohen et al. CIFAR-10 recipe).
    c.batch_size = 256
    c.eval_batch_size = 500
    c.num_epochs = 90.0
    c.total_steps = 0  # > 0 overrides num_epochs
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.lr_schedule = "step"  # step | multistep | cosine | constant
    c.lr_step_epochs = 30
    c.lr_decay = 0.1
    c.lr_milestones = ()  # lr_schedule='multistep': epochs at which the learning rate is multiplied by lr_decay
    c.nesterov = False
    c.grad_clip_norm = 0.0  # > 0: clip the loss gradient to this global L2 norm (SIAM: 0.05)
    c.seed = 0
    # Bookkeeping.
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 100
    c.eval_every_steps = 0  # 0 = evaluate at the end only
    c.keep_best_by = ""  # an evaluation metric (e.g. clean_accuracy): keep the best state in workdir/best
    # Multi-host: set coordinator_address (or SMOOTHJAX_DISTRIBUTED=1 to auto-detect, e.g. on TPU pods).
    c.distributed = ml_collections.ConfigDict({"coordinator_address": "", "num_processes": -1, "process_id": -1})
    # Certification (certify.py): Cohen et al.'s CERTIFY / PREDICT; sigma None = the training sigma.
    c.certify = ml_collections.ConfigDict({
        "sigma": ml_collections.config_dict.placeholder(float), "n0": 100, "n": 100_000, "alpha": 0.001,
        "batch_size": 1000, "skip": 1, "max": -1, "split": "test", "mode": "certify", "seed": 0,
        "images_per_step": 1,
        # PRNG of the noise: threefry (JAX's default, the committed logs) | rbg | unsafe_rbg (faster bits on GPU/TPU,
        # rows depend on the batching; benchmarks/certify_throughput.py --key_impls). Logged unless threefry.
        "key_impl": "threefry",
        # Predict mode only: attack each image first (SmoothAdv's predict.py). epsilon in pixel L2 units;
        # num_noise_vec = m draws for the attack; base_attack = attack the base classifier without noise.
        "attack": "none", "epsilon": 0.0, "num_steps": 20, "num_noise_vec": 1, "no_grad_attack": False,
        "base_attack": False,
        # Sequential mode (mode='sequential', certification.sequential): stop once the radius grid is settled. radii:
        # '' = 0, 0.25, ... up to 3 sigma; else '0,0.25,0.5' or 'start:stop:step'. cs_method: betting | union | grid.
        # futility: 'projected' gives up on the next radius when even an optimistic miss rate (Clopper-Pearson at
        # futility_level) would not certify it by max_samples; 'exact' only when all-hits could not. Both are valid.
        "radii": "", "max_samples": 100_000, "cs_method": "betting", "futility": "projected", "futility_level": 0.01,
        # sound: exact grid noise (certification.sound_noise), inputs rounded to the 1/255 grid; randomized_cp: the
        # randomized Clopper-Pearson bound (mode='certify'); both write separately named logs.
        "sound": False, "randomized_cp": False,
        # tag: an extra part of the log name (certify_<tag>_sigma_0.25.tsv), e.g. to keep an n = 100,000 log beside
        # the n = 10,000 one in the same workdir.
        "tag": ""})
    # SIAM evaluation (evaluate.py, smoothjax.jobs.evaluate): accuracy of the smoothed classifier of a stochastic model
    # over noise_sd x m_test (comma lists; noise_sd '' = the model's own, pixel units) under L-inf attacks of budget
    # epsilon (pixel units): clean, pgd, epgd (eot_passes per step), transfer (crafted on source_workdir), nattack.
    c.evaluate = ml_collections.ConfigDict({
        "noise_sd": "", "m_test": "1,8", "mode": "vote", "attacks": "clean,pgd,epgd", "epsilon": 8 / 255,
        "pgd_steps": 7, "eot_passes": 8, "source_workdir": "", "nattack_population": 300, "nattack_iterations": 500,
        "split": "test", "max_images": 1000, "batch_size": 100,
        "chunk_size": 1,  # stochastic passes vmapped together (0 = all at once; 1 is fastest with weight noise on CPU)
        "pass_loop": "auto",  # EPGD's passes: auto (scan on CPU) | vmap | scan
        "seed": 0, "out": ""})  # out '' = <workdir>/robustness
    return c


def parse_args(arg: str, types: dict) -> dict:
    """Parses a config argument ``key=value,key=value`` whose keys and value types are ``types`` (e.g. ``{"sigma":
    float}``); raises a one-line ValueError naming the part that is not allowed."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in types:
            raise ValueError(f"config argument {part!r} is not allowed; keys: {', '.join(types)}")
        try:
            out[key] = types[key](value)
        except ValueError:
            raise ValueError(f"config argument {part!r} is not allowed; {key} needs a {types[key].__name__}") from None
    return out


def parse_sigma(arg: str) -> dict:
    """Parses ``sigma=<float>`` (the only argument of the Gaussian recipes); one-line ValueError otherwise."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or key != "sigma":
            raise ValueError(f"config argument {part!r} is not allowed; use sigma=<float>, e.g. cifar10.py:sigma=0.5")
        out[key] = float(value)
    return out


def cohen_cifar10(arg: str = "sigma=0.25") -> ml_collections.ConfigDict:
    """Cohen et al.'s CIFAR-10 recipe (configs/cifar10.py): ResNet-110, Gaussian augmentation at ``sigma``."""
    c = base_config()
    c.model = "cifar_resnet110"
    c.dataset = "cifar10"
    c.dataset_stats = "cifar10"
    c.augment = "cifar"
    c.sigma = parse_sigma(arg).get("sigma", 0.25)
    return c


def cpu_cifar10(arg: str = "sigma=0.25") -> ml_collections.ConfigDict:
    """Cohen et al.'s recipe scaled to 2 CPU cores (configs/cifar10_cpu.py): ResNet-20, 20 epochs, cosine lr, image
    folder data; CERTIFY n = 10,000 on every 20th test image at batch 400."""
    c = cohen_cifar10(arg)
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
    return c


_FLOAT = ("sigma", "eps", "eps256", "weight")
_INT = ("steps", "m", "multi", "nograd", "warmup", "pretrain32")
_STR = ("attack", "finetune", "teacher", "unlabelled")


def parse_smoothadv(arg: str) -> dict:
    """Parses ``key=value,key=value`` (keys above); raises a one-line ValueError naming a bad part."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in _FLOAT + _INT + _STR:
            raise ValueError(f"config argument {part!r} is not allowed; keys: {', '.join(_FLOAT + _INT + _STR)}")
        try:
            out[key] = float(value) if key in _FLOAT else int(value) if key in _INT else value
        except ValueError:
            raise ValueError(f"config argument {part!r} is not allowed; {key} needs a number") from None
    if "eps" in out and "eps256" in out:
        raise ValueError("config arguments eps and eps256 are exclusive; eps is in pixel units, eps256=N means N/256")
    return out


def apply_smoothadv(c, args: dict, *, default_warmup: int) -> None:
    """Sets ``c.loss``, ``c.sigma`` and the SmoothAdv fields ``c.smoothadv`` of config ``c`` from parsed arguments."""
    c.loss = "smoothadv"
    c.normalization = "mean"  # the reference's InputCenterLayer: x - mean, no division
    c.sigma = args.get("sigma", c.sigma)
    s = c.smoothadv  # defaults: base_config
    s.attack = args.get("attack", s.attack)
    s.epsilon = args["eps256"] / 256.0 if "eps256" in args else args.get("eps", s.epsilon)
    s.num_steps = args.get("steps", s.num_steps)
    s.num_noise_vec = args.get("m", s.num_noise_vec)
    s.train_multi_noise = bool(args.get("multi", s.train_multi_noise))
    s.no_grad_attack = bool(args.get("nograd", s.no_grad_attack))
    s.warmup = args.get("warmup", default_warmup)
    if s.train_multi_noise:
        c.batch_size = max(1, c.batch_size // s.num_noise_vec)


REFERENCE_STD = (0.247, 0.243, 0.262)  # the reference's Normalize std (both datasets)
NOISE_SD_REF = 0.25  # the reference's --noise_sd (normalised units)


def siam_config(dataset: str, arg: str, std=REFERENCE_STD) -> ml_collections.ConfigDict:
    """SIAM's recipe (configs/siam_cifar10.py) on ``dataset``; ``arg``: noise=pni|cpni, attack=pgd|epgd, width=<int>."""
    opts = dict(part.split("=", 1) for part in filter(None, (arg or "").split(",")))
    allowed = {"noise": ("pni", "cpni"), "attack": ("pgd", "epgd"), "width": None}
    for k, v in opts.items():
        if k not in allowed or (allowed[k] and v not in allowed[k]):
            raise ValueError(f"config argument {k}={v!r} is not allowed; use noise=pni|cpni, attack=pgd|epgd, "
                             "width=<int>")
    c = base_config()
    c.model = f"cifar_resnet20_{opts.get('noise', 'cpni')}"
    c.model_kwargs = ml_collections.ConfigDict({"noise_sd": tuple(NOISE_SD_REF * s for s in std),
                                                "width": int(opts.get("width", 1))})
    c.dataset = dataset
    c.dataset_stats = dataset
    c.augment = "cifar"
    c.sigma = 0.0  # the loop's "noisy accuracy" adds no extra noise: the model carries its own
    c.loss = "siam"
    c.siam.m_train = 8 if opts.get("attack") == "epgd" else 1  # the rest of config.siam: base_config
    c.batch_size = 256
    c.num_epochs = 400.0
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.lr_schedule = "multistep"
    c.lr_milestones = (200, 300)
    c.lr_decay = 0.1
    c.grad_clip_norm = 0.05
    c.keep_best_by = "clean_accuracy"  # smoothed clean accuracy (siam.eval_apply_fn)
    c.eval_every_steps = 196 * 5  # every 5 epochs (196 steps/epoch at batch 256)
    return c
