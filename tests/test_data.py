"""Tests for smoothjax.data: sources, loader determinism / sharding / resumption, eval padding, augmentation.

Oracles are independent of the code under test: scikit-learn's raw digits, the raw .npz arrays, pixels we write
ourselves (PNG is lossless), closed forms for crops / resizes of linear ramps, and the documented permutation
definition ``np.random.default_rng([seed, 0, epoch]).permutation(n)``.
"""

import io
import itertools
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from smoothjax import data

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def indexed_source(n: int, shape=(6, 6, 3), dtype=np.uint8) -> data.ArraySource:
    """Label i = index i (num_classes = n); distinct random pixels so augmentation outputs differ."""
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, (n,) + shape).astype(np.uint8)
    if dtype != np.uint8:
        images = images.astype(np.float32) / 255.0
    return data.ArraySource(images, np.arange(n), n)


# --------------------------------------------------------------------------------------------------- registry
def test_unknown_dataset_is_one_line_value_error():
    with pytest.raises(ValueError) as info:
        data.get_source("foo", "train")
    assert str(info.value) == ("unknown dataset 'foo'; choose one of: cifar10, cifar100, digits, image_folder, "
                               "imagenet, imagenet32, arrays")
    with pytest.raises(ValueError, match="option"):
        data.get_source("digits", "train", colour=True)


def test_dataset_stats_reference_values():
    assert data.DATASET_STATS["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert data.DATASET_STATS["cifar100"] == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    assert data.DATASET_STATS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# ----------------------------------------------------------------------------------------------------- digits
def test_digits_split_matches_sklearn_and_stats():
    from sklearn.datasets import load_digits

    raw = load_digits()
    perm = np.random.default_rng(0).permutation(1797)  # The documented split definition.
    train, test = data.get_source("digits", "train"), data.get_source("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.image_shape == (8, 8, 1) and train.num_classes == 10
    for src, idx in ((train, perm[:1437]), (test, perm[1437:])):
        images, labels = src.get_batch(np.arange(len(src)))
        assert images.dtype == np.float32 and labels.dtype == np.int32
        np.testing.assert_array_equal(images[..., 0], raw.images[idx] / 16.0)
        np.testing.assert_array_equal(labels, raw.target[idx])
    image, label = test[5]
    assert image.dtype == np.float32 and label == raw.target[perm[1442]]
    # Train and test partition the 1797 images.
    assert len(set(perm[:1437]) | set(perm[1437:])) == 1797
    pixels = raw.images[perm[:1437]] / 16.0
    (mean,), (std,) = data.DATASET_STATS["digits"]
    assert abs(mean - pixels.mean()) < 5e-5 and abs(std - pixels.std()) < 5e-5
    with pytest.raises(ValueError, match="split"):
        data.get_source("digits", "validation")


# ------------------------------------------------------------------------------------------------------- npz
def test_cifar_npz_test_sets(shared_dir):
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        path = shared_file(f"{name}-test.npz")
        src = data.get_source(name, "test", path=path)
        with np.load(path) as f:
            x, y = f["x"], f["y"]
        assert len(src) == 10000 and src.image_shape == (32, 32, 3) and src.num_classes == classes
        np.testing.assert_array_equal(np.bincount(src.labels, minlength=classes), np.full(classes, 10000 // classes))
        image, label = src[1234]
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, x[1234])
        assert label == y[1234]
        images, labels = src.get_batch(np.array([0, 9999]))
        np.testing.assert_allclose(images, x[[0, 9999]] / 255.0, atol=1e-7)
    assert data.get_source("cifar10", "test", path=shared_file("cifar10-test.npz"))[0][1] == 3  # A cat.


def test_npz_paths_and_split_guard(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), np.array([0, 9, 2, 3, 4])
    np.savez(tmp_path / "cifar10-test.npz", x=x, y=y)
    np.savez(tmp_path / "cifar10-train.npz", x=x[:3], y=y[:3])
    assert len(data.get_source("cifar10", "test", path=tmp_path)) == 5  # Directory: <name>-<split>.npz.
    assert len(data.get_source("cifar10", "train", path=str(tmp_path / "cifar10-{split}.npz"))) == 3
    src = data.get_source("cifar10", "test", path=tmp_path / "cifar10-test.npz")
    assert src.num_classes == 10 and src[1][1] == 9
    with pytest.raises(ValueError, match="not the requested split 'train'"):
        data.get_source("cifar10", "train", path=tmp_path / "cifar10-test.npz")
    with pytest.raises(ValueError, match="does not exist"):
        data.get_source("cifar100", "test", path=tmp_path)
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(ValueError, match="expected x"):
        data.get_source("arrays", "test", path=tmp_path / "bad.npz")
    arrays = data.get_source("arrays", "any", path=tmp_path / "cifar10-test.npz", num_classes=12)
    assert arrays.num_classes == 12 and len(arrays) == 5


# ------------------------------------------------------------------------------------------------------ tfds
def test_tfds_mock_sources_and_imagenet_transforms():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        for name, classes in (("cifar10", 10), ("cifar100", 100)):
            src = data.get_source(name, "train")
            assert (len(src), src.num_classes, src.image_shape) == (12, classes, (32, 32, 3))
            image, label = src[11]
            assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and 0 <= label < classes
        small = data.get_source("imagenet32", "train")  # SmoothAdv's pre-training data
        assert (small.num_classes, small.image_shape) == (1000, (32, 32, 3)) and small[0][0].shape == (32, 32, 3)
        val = data.get_source("imagenet", "validation")
        assert val.num_classes == 1000 and val.image_shape == (224, 224, 3)
        assert val[0][0].shape == (224, 224, 3) and val[0][0].dtype == np.uint8
        train = data.get_source("imagenet", "train")
        loader = data.Loader(train, global_batch_size=4, seed=0, augment="imagenet", process_index=0,
                             process_count=1, num_threads=2)
        batch = loader.local_batch(0)
        assert batch["image"].shape == (4, 224, 224, 3) and batch["label"].dtype == np.int32
        with pytest.raises(ValueError, match="image_shape"):  # Raw training images vary in size.
            data.Loader(train, global_batch_size=4, seed=0, process_index=0, process_count=1).local_batch(0)


def test_tfds_real_array_record_build(tmp_path):
    """A tiny genuine cifar10 array_record directory made by tfds's own builder (download and TF-only reader
    patched out); the source must return exactly the pixels and labels we wrote."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import cifar

    rng = np.random.default_rng(7)
    raw = tmp_path / "raw" / "cifar-10-batches-bin"
    raw.mkdir(parents=True)
    written = {}
    for fname, n in [(f"data_batch_{i}.bin", 1) for i in range(1, 6)] + [("test_batch.bin", 4)]:
        labels, images = rng.integers(0, 10, n), rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        (raw / fname).write_bytes(b"".join(bytes([lab]) + im.tobytes() for lab, im in zip(labels, images)))
        written[fname] = [(im.transpose(1, 2, 0).tobytes(), int(lab)) for lab, im in zip(labels, images)]
    (raw / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")

    def load_data(path, labels_number=1):  # Replaces tfds's TensorFlow-based reader of the binary batches.
        blob = Path(path).read_bytes()
        for off in range(0, len(blob), 3073):
            png = io.BytesIO()
            Image.fromarray(np.frombuffer(blob, np.uint8, 3072, off + 1).reshape(3, 32, 32).transpose(1, 2, 0)
                            ).save(png, format="PNG")
            yield np.frombuffer(blob, np.uint8, 1, off), png.getvalue()

    data_dir = tmp_path / "tfds"
    builder = tfds.builder("cifar10", data_dir=str(data_dir), file_format="array_record")
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           lambda self, url: str(tmp_path / "raw")), mock.patch.object(cifar, "_load_data", load_data):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    test = data.get_source("cifar10", "test", data_dir=data_dir)
    train = data.get_source("cifar10", "train", data_dir=data_dir)
    assert (len(train), len(test), test.num_classes, test.class_names) == (5, 4, 10, CIFAR10_CLASSES)
    got = sorted((test[i][0].tobytes(), test[i][1]) for i in range(len(test)))
    assert got == sorted(written["test_batch.bin"])  # tfds stores its own order; compare as multisets.
    got = sorted((train[i][0].tobytes(), train[i][1]) for i in range(len(train)))
    assert got == sorted(item for i in range(1, 6) for item in written[f"data_batch_{i}.bin"])


def test_tfds_missing_dataset_error_says_where_and_how(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError) as info:
        data.get_source("cifar100", "train", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "tfds build cifar100" in message
    assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or created.
    with pytest.raises(ValueError, match="imagenet2012 .*manual_dir"):
        data.get_source("imagenet", "validation", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ image folder
def _write_folder(root: Path, top: str = "") -> dict:
    """<root>/<top>/<split>/<class>/<k>.png with known pixels; returns {split: [(class, pixels)]} in file order."""
    rng = np.random.default_rng(3)
    out = {}
    for split, per_class in (("train", 3), ("test", 2)):
        items = []
        for cls in ("zebra", "ant", "moth"):  # Deliberately unsorted.
            folder = root / top / split / cls
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:04d}.png")
                items.append((cls, pixels))
            (folder / "notes.txt").write_text("not an image")
        out[split] = items
    return out


def _zip_dir(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(src).as_posix())
    return dest


def test_image_folder_directory_and_zip(tmp_path):
    written = _write_folder(tmp_path / "plain")
    _write_folder(tmp_path / "nested", top="mydata")
    archive = _zip_dir(tmp_path / "nested", tmp_path / "nested.zip")
    for path in (tmp_path / "plain", archive):
        for split, per_class in (("train", 3), ("test", 2)):
            src = data.get_source("image_folder", split, path=path)
            assert src.class_names == ["ant", "moth", "zebra"] and src.num_classes == 3
            assert len(src) == 3 * per_class and src.image_shape == (5, 7, 3)
            expected = sorted(written[split], key=lambda cp: src.class_names.index(cp[0]))  # Stable: keeps k order.
            for i, (cls, pixels) in enumerate(expected):
                image, label = src[i]
                assert image.dtype == np.uint8 and label == src.class_names.index(cls)
                np.testing.assert_array_equal(image, pixels)
    src = data.get_source("image_folder", "train", path=archive)
    loaders = [data.Loader(src, global_batch_size=8, seed=3, augment="cifar", process_index=0, process_count=1,
                           num_threads=t, drop_remainder=False) for t in (1, 4)]
    a, b = (ld.local_batch(1) for ld in loaders)
    np.testing.assert_array_equal(a["image"], b["image"])
    for ld in loaders:
        ld.close()


def test_image_folder_greyscale_and_errors(tmp_path):
    folder = tmp_path / "grey" / "train" / "only"
    folder.mkdir(parents=True)
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(folder / "a.png")
    src = data.get_source("image_folder", "train", path=tmp_path / "grey")
    assert src.image_shape == (3, 4, 1)
    np.testing.assert_array_equal(src[0][0][..., 0], np.arange(12).reshape(3, 4))
    not_zip = tmp_path / "fake.zip"
    not_zip.write_text("hello")
    no_split = _zip_dir(tmp_path / "grey", tmp_path / "grey.zip")
    (tmp_path / "empty" / "test" / "c").mkdir(parents=True)
    broken = tmp_path / "broken" / "train" / "c"
    broken.mkdir(parents=True)
    (broken / "x.jpg").write_bytes(b"not a jpeg")
    cases = [(not_zip, "train", "neither a directory nor a zip"), (no_split, "test", "holds no 'test' folder"),
             (tmp_path / "missing", "train", "does not exist"), (tmp_path / "empty", "test", "holds no .jpg"),
             (tmp_path / "broken", "train", "cannot decode")]
    for path, split, text in cases:
        with pytest.raises(ValueError) as info:
            data.get_source("image_folder", split, path=path)
        assert text in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_image_folder_shared_cifar10_zip(shared_dir):
    path = shared_file("cifar10-jpeg.zip")
    train, test = (data.get_source("image_folder", s, path=path) for s in ("train", "test"))
    assert (len(train), len(test), train.num_classes) == (50000, 10000, 10)
    assert train.class_names == CIFAR10_CLASSES and test.class_names == CIFAR10_CLASSES
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
    image, label = test[2500]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 2 and image.std() > 0


# ------------------------------------------------------------------------------------------------------ loader
def test_loader_batches_follow_documented_permutation_and_are_deterministic():
    src = indexed_source(50)
    loader = data.Loader(src, global_batch_size=8, seed=11, process_index=0, process_count=1)
    assert loader.steps_per_epoch == 6
    for step in (0, 5, 6, 13):
        epoch, k = divmod(step, 6)
        perm = np.random.default_rng([11, 0, epoch]).permutation(50)
        batch = loader.local_batch(step)
        np.testing.assert_array_equal(batch["label"], perm[k * 8:(k + 1) * 8])
        np.testing.assert_allclose(batch["image"], src.images[perm[k * 8:(k + 1) * 8]] / 255.0, atol=1e-7)
        assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    other = data.Loader(src, global_batch_size=8, seed=11, process_index=0, process_count=1, augment="cifar")
    again = data.Loader(src, global_batch_size=8, seed=11, process_index=0, process_count=1, augment="cifar")
    np.testing.assert_array_equal(other.local_batch(4)["image"], again.local_batch(4)["image"])
    assert not np.array_equal(other.local_batch(4)["label"], other.local_batch(5)["label"])
    seed2 = data.Loader(src, global_batch_size=8, seed=12, process_index=0, process_count=1)
    assert not np.array_equal(seed2.local_batch(0)["label"], loader.local_batch(0)["label"])
    plain = data.Loader(src, global_batch_size=8, seed=11, shuffle=False, process_index=0, process_count=1)
    np.testing.assert_array_equal(plain.local_batch(7)["label"], np.arange(8, 16))


def test_epoch_covers_each_index_once():
    src = indexed_source(50)
    loader = data.Loader(src, global_batch_size=8, seed=0, process_index=0, process_count=1)
    epochs = [np.concatenate([loader.local_batch(e * 6 + k)["label"] for k in range(6)]) for e in range(2)]
    for labels in epochs:  # drop_remainder: 48 distinct indices per epoch, the other 2 dropped.
        assert len(labels) == 48 and len(set(labels.tolist())) == 48 and labels.max() < 50
    assert not np.array_equal(epochs[0], epochs[1])
    keep = data.Loader(src, global_batch_size=8, seed=0, drop_remainder=False, process_index=0, process_count=1)
    assert keep.steps_per_epoch == 7
    labels = np.concatenate([keep.local_batch(k)["label"] for k in range(7)])
    counts = np.bincount(labels, minlength=50)
    assert counts.min() == 1 and counts.sum() == 56  # Every index; the last batch wraps to the epoch's start.
    np.testing.assert_array_equal(labels[50:], labels[:6])


def test_union_over_processes_equals_global_batch_and_threads_do_not_matter():
    src = indexed_source(40)
    kw = dict(global_batch_size=8, seed=5, augment="cifar")
    single = data.Loader(src, process_index=0, process_count=1, num_threads=1, **kw)
    for count, threads in ((2, 3), (4, 1), (8, 2)):
        for step in (0, 7):
            parts = [data.Loader(src, process_index=p, process_count=count, num_threads=threads, **kw)
                     .local_batch(step) for p in range(count)]
            assert all(part["image"].shape == (8 // count, 6, 6, 3) for part in parts)
            want = single.local_batch(step)
            for key in ("image", "label"):
                np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), want[key])
    augmented = single.local_batch(0)["image"]
    raw = src.images[single.local_batch(0)["label"]] / 255.0
    assert not np.allclose(augmented, raw)  # The augmentation did act.
    with pytest.raises(ValueError, match="global_batch_size=10 is not divisible by process_count=4"):
        data.Loader(src, global_batch_size=10, seed=0, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="fewer than global_batch_size=64"):
        data.Loader(src, global_batch_size=64, seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="process_index=2"):
        data.Loader(src, global_batch_size=8, seed=0, process_index=2, process_count=2)


def test_resumed_iterate_equals_tail_and_errors_propagate():
    src = indexed_source(20)
    loader = data.Loader(src, global_batch_size=4, seed=2, augment="cifar", process_index=1, process_count=2)
    full = list(itertools.islice(loader.iterate(0), 12))  # Crosses two epoch boundaries (5 steps per epoch).
    resumed = list(itertools.islice(loader.iterate(start_step=7), 5))
    plain = list(loader.iterate(7, num_steps=5, prefetch=0))
    assert len(plain) == 5
    for a, b, c in zip(full[7:], resumed, plain):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], c["label"])
    for s, batch in enumerate(full):
        np.testing.assert_array_equal(batch["label"], loader.local_batch(s)["label"])

    def broken(image, rng):
        raise RuntimeError("augment failed")

    bad = data.Loader(src, global_batch_size=4, seed=2, augment=broken, process_index=0, process_count=1)
    with pytest.raises(RuntimeError, match="augment failed"):
        next(bad.iterate(0))


def test_eval_batches_pad_and_mask():
    src = indexed_source(10, dtype=np.float32)
    batches = list(data.eval_batches(src, batch_size=4, process_index=0, process_count=1))
    assert len(batches) == 3
    np.testing.assert_array_equal(batches[2]["mask"], [True, True, False, False])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10], np.arange(10))
    np.testing.assert_array_equal(batches[2]["image"][2:], 0.0)
    np.testing.assert_allclose(batches[1]["image"], src.images[4:8])
    seen = []
    for p in range(2):
        parts = list(data.eval_batches(src, batch_size=4, process_index=p, process_count=2, num_threads=2))
        assert len(parts) == 3 and all(b["image"].shape == (2, 6, 6, 3) for b in parts)
        seen += [int(lab) for b in parts for lab, m in zip(b["label"], b["mask"]) if m]
    assert sorted(seen) == list(range(10))
    with pytest.raises(ValueError, match="batch_size=5 is not divisible by process_count=2"):
        data.eval_batches(src, batch_size=5, process_index=0, process_count=2)


# ------------------------------------------------------------------------------------------------ augmentation
def test_cifar_crop_flip_is_a_uniform_padded_crop_and_flip():
    h, w, c, pad = 6, 5, 2, 4
    image = (np.arange(h * w * c, dtype=np.float32).reshape(h, w, c) + 1) / (h * w * c)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    candidates = np.stack([crop[:, ::-1] if flip else crop for top in range(9) for left in range(9)
                           for flip in (0, 1) for crop in [padded[top:top + h, left:left + w]]])
    augment = data.get_augment("cifar", (h, w, c))
    counts = np.zeros(len(candidates), int)
    for seed in range(3000):
        out = augment(image, np.random.default_rng(seed))
        assert out.shape == (h, w, c) and out.dtype == np.float32
        match = np.flatnonzero(np.all(candidates == out, axis=(1, 2, 3)))
        assert len(match) == 1
        counts[match[0]] += 1
    assert stats.chisquare(counts).pvalue > 1e-3  # Uniform over 81 offsets x 2 flips.
    assert data.get_augment("none", (h, w, c))(image, None) is image
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        data.get_augment("mixup", (h, w, c))


def _ramp(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs / (w - 1), ys / (h - 1), np.full_like(xs, 0.5)], axis=-1)


def test_imagenet_random_resized_crop_geometry():
    # Upsampling (crop <= 16 px -> 64 px) interpolates between two taps, which is exact on a linear ramp, so the
    # slope and value at the output centre give the crop's width, height, left and top exactly.
    height, width, out = 12, 16, 64
    image = _ramp(height, width)
    augment = data.get_augment("imagenet", (out, out, 3))
    flips, areas = 0, []
    for seed in range(300):
        res = augment(image, np.random.default_rng(seed))
        assert res.shape == (out, out, 3) and res.dtype == np.float32 and res.min() >= 0 and res.max() <= 1
        flipped = res[32, 33, 0] < res[32, 31, 0]
        flips += flipped
        res = res[:, ::-1] if flipped else res
        cw = (res[32, 33, 0] - res[32, 31, 0]) / 2 * (width - 1) * out
        ch = (res[33, 32, 1] - res[31, 32, 1]) / 2 * (height - 1) * out  # Positive: never flipped vertically.
        assert abs(cw - round(cw)) < 1e-3 and abs(ch - round(ch)) < 1e-3
        cw, ch = round(cw), round(ch)
        left = res[32, 31, 0] * (width - 1) + 0.5 - 31.5 * cw / out
        top = res[31, 32, 1] * (height - 1) + 0.5 - 31.5 * ch / out
        assert abs(left - round(left)) < 1e-3 and abs(top - round(top)) < 1e-3
        assert 0 <= round(left) <= width - cw and 0 <= round(top) <= height - ch
        tol = 1 / cw + 1 / ch  # Both sides are rounded to whole pixels.
        assert 3 / 4 * (1 - tol) <= cw / ch <= 4 / 3 * (1 + tol)
        areas.append(cw * ch / (height * width))
        np.testing.assert_allclose(res[..., 2], 0.5, atol=1e-6)
    assert 0.38 < flips / 300 < 0.62
    assert 0.08 * 0.8 < min(areas) < 0.2 and max(areas) > 0.9
    # Fallback for a strip no drawn window fits: the centred window with the ratio clamped to 4/3.
    assert data.sample_resized_crop_box(10, 200, np.random.default_rng(0)) == (0, 93, 10, 13)


def test_imagenet_eval_transform_resize_and_centre_crop():
    image = _ramp(300, 400)
    out = data.imagenet_eval_transform(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    # Shorter side 300 -> 256, longer 400 -> int(256 * 400 / 300) = 341; centre crop offsets 16 and 58. Pillow's
    # antialiasing filter is linear-exact only up to its discrete taps: allow a quarter of an output pixel, which
    # still tells an off-by-one crop offset apart.
    for col in (100, 112, 130):
        want = ((58 + col + 0.5) * 400 / 341 - 0.5) / 399
        assert abs(out[112, col, 0] - want) < 0.25 * 400 / 341 / 399
    for row in (100, 112):
        want = ((16 + row + 0.5) * 300 / 256 - 0.5) / 299
        assert abs(out[row, 112, 1] - want) < 0.25 * 300 / 256 / 299
    portrait = data.imagenet_eval_transform((_ramp(400, 300) * 255).round().astype(np.uint8))
    assert portrait.shape == (224, 224, 3) and portrait.dtype == np.uint8
    assert abs(int(portrait[112, 112, 0]) - 128) <= 1 and abs(int(portrait[112, 112, 1]) - 128) <= 1


def test_array_source_validation_and_conversion():
    images = np.array([[[[0]], [[255]]]], dtype=np.uint8)
    src = data.ArraySource(images, np.array([1]), 2)
    np.testing.assert_array_equal(src.get_batch(np.array([0]))[0], [[[[0.0]], [[1.0]]]])
    with pytest.raises(ValueError, match="num_classes=1"):
        data.ArraySource(images, np.array([1]), 1)
    with pytest.raises(ValueError, match="dtype int16"):
        data.ArraySource(images.astype(np.int16), np.array([0]), 2)
    with pytest.raises(IndexError):
        src[1]


def test_fingerprint_is_what_the_examples_are_not_where_they_lie(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 12)
    np.savez(tmp_path / "a-test.npz", x=x, y=y)
    (tmp_path / "elsewhere").mkdir()
    np.savez(tmp_path / "elsewhere" / "b-test.npz", x=x, y=y)
    indices = np.arange(0, 12, 3)
    fps = {data.fingerprint(data.get_source("arrays", "test", path=p, num_classes=10), indices)
           for p in (tmp_path / "a-test.npz", tmp_path / "elsewhere" / "b-test.npz")}
    fps.add(data.fingerprint(data.ArraySource(data.as_float_image(x), y, 10), indices))  # same pixels as floats
    assert len(fps) == 1
    (fp,) = fps
    changed_pixel, changed_label = x.copy(), y.copy()
    changed_pixel[6, 1, 2, 0] ^= 1
    changed_label[9] = (changed_label[9] + 1) % 10
    assert data.fingerprint(data.ArraySource(changed_pixel, y, 10), indices) != fp
    assert data.fingerprint(data.ArraySource(x, changed_label, 10), indices) != fp
    assert data.fingerprint(data.ArraySource(changed_pixel, y, 10), [0, 3]) == data.fingerprint(
        data.ArraySource(x, y, 10), [0, 3])  # only the selected examples count
    assert data.fingerprint(data.ArraySource(x, y, 10), indices[::-1]) != fp  # and their order
