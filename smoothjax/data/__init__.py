"""Data for smoothjax: sources by name, deterministic multi-process loading, augmentation, normalisation stats.

    src = get_source("digits", "train")             # or cifar10 / cifar100 / imagenet / image_folder / arrays
    loader = Loader(src, global_batch_size=64, seed=0, augment=get_augment("none", src.image_shape))
    batch = loader.local_batch(step)                # {"image": float32 NHWC in [0, 1], "label": int32}
    for batch in eval_batches(src, batch_size=100): ...   # adds "mask" (False on padding rows)

Heavy optional readers (tensorflow-datasets, Pillow, scikit-learn) are imported only when a source needs them.
"""

from smoothjax.data.augment import (AUGMENT_NAMES, get_augment, identity, imagenet_eval_transform,
                                    random_crop_flip, random_resized_crop_flip, resize, sample_resized_crop_box)
from smoothjax.data.fingerprint import fingerprint
from smoothjax.data.loader import Loader, epoch_permutation, eval_batches, example_rng, load_examples
from smoothjax.data.registry import SOURCE_NAMES, get_source
from smoothjax.data.source import ArraySource, Source, as_float_image
from smoothjax.data.stats import DATASET_STATS

__all__ = [
    "AUGMENT_NAMES", "ArraySource", "DATASET_STATS", "Loader", "SOURCE_NAMES", "Source", "as_float_image",
    "epoch_permutation", "eval_batches", "fingerprint", "example_rng", "get_augment", "get_source", "identity",
    "imagenet_eval_transform", "load_examples", "random_crop_flip", "random_resized_crop_flip", "resize",
    "sample_resized_crop_box",
]
