"""Per-channel pixel statistics (mean, std) in [0, 1] units, used by models to normalise their inputs.

CIFAR-10, CIFAR-100 and ImageNet use the values of the reference implementations (Cohen et al. 2019 for CIFAR-10;
the standard torchvision values for ImageNet). ``digits`` was computed once from its ``train`` split
(``smoothjax.data.digits``: 1,437 images, pixels / 16) as the mean and population standard deviation over all
train pixels, rounded to 4 decimals: mean 0.305447, std 0.376037.
"""

DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3054,), (0.3760,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
