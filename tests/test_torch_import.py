"""Importing PyTorch checkpoints without torch: logits equal PyTorch's on every committed fixture layout (Cohen,
SmoothAdv, SIAM, torchvision ResNet; zip and legacy formats), one-line errors on bad input, malicious pickles
refused before anything runs, and the CLI's workdir loads through smoothjax.checkpointing.

The fixtures (tests/fixtures/torch, made by tools/make_torch_fixtures.py with PyTorch) hold PyTorch's own logits,
the independent oracle here; these tests never need torch.
"""

import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from smoothjax import checkpointing, torch_import
from smoothjax.torch_import import layouts
from smoothjax.torch_import.__main__ import main as cli_main
from smoothjax.torch_import.normalization import noise_floor_ratios
from smoothjax.torch_import.unpickler import UnsafeCheckpointError, load_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch"
IMPORTABLE = sorted(p.name[: -len(".pth.tar")] for p in FIXTURES.glob("*.pth.tar") if "cpni" not in p.name)


def _fixture(name):
    data = np.load(FIXTURES / f"{name}.npz")
    return FIXTURES / f"{name}.pth.tar", data["pixels"].astype(np.float32) / 255, data["logits"], json.loads(
        str(data["meta"]))


def test_fixture_set_is_complete():
    names = " ".join(IMPORTABLE)
    for needed in ("cohen", "smoothadv", "imagenet32", "siam", "torchvision", "zip", "legacy", "buffers"):
        assert needed in names
    assert (FIXTURES / "siam_cpni_resnet8_zip.pth.tar").exists()


@pytest.mark.parametrize("name", IMPORTABLE)
def test_logits_equal_pytorch(name):
    path, images, logits, meta = _fixture(name)
    imported = torch_import.import_checkpoint(path)
    expect = meta["expect"]
    spec = imported.spec
    assert spec["model"] == expect["model"]
    assert spec["num_classes"] == meta["num_classes"]
    assert spec["normalization"] == expect["normalization"]
    np.testing.assert_allclose(spec["model_kwargs"]["mean"], expect["mean"], rtol=1e-6)
    if expect["normalization"] == "mean_std":
        np.testing.assert_allclose(spec["model_kwargs"]["std"], expect["std"], rtol=1e-6)
    for key, value in expect.get("model_kwargs", {}).items():
        assert spec["model_kwargs"][key] == value
    out = np.asarray(imported.model.apply(imported.variables, images))
    assert out.shape == logits.shape
    np.testing.assert_allclose(out, logits, atol=1e-4, rtol=1e-4)


SIAM_STATS = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))  # yanemcovsky/SIAM cifar_data.py
COHEN_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # locuslab/smoothing datasets.py


@pytest.mark.parametrize("arch", [None, "cifar_resnet8"])
def test_a_bare_cifar_network_gets_siam_statistics_even_with_an_arch(arch, capsys):
    # The reported defect: a SIAM ResNet imported with arch given was normalised with Cohen's statistics.
    path, images, logits, _ = _fixture("siam_resnet8_zip")
    model, variables = torch_import.load(path, arch=arch)
    np.testing.assert_allclose(model.apply(variables, images), logits, atol=1e-4, rtol=1e-4)
    err = capsys.readouterr().err
    assert "preset 'siam', chosen from the layout" in err and "(0.491, 0.482, 0.447)" in err


def test_presets_explicit_statistics_and_their_errors():
    path, images, logits, _ = _fixture("siam_resnet8_zip")
    cohen = torch_import.import_checkpoint(path, preset="cohen")
    assert cohen.spec["normalization"] == "mean_std"
    assert (tuple(cohen.spec["model_kwargs"]["mean"]), tuple(cohen.spec["model_kwargs"]["std"])) == COHEN_STATS
    assert any("preset 'cohen', as requested" in note for note in cohen.notes)
    wrong = np.asarray(cohen.model.apply(cohen.variables, images))
    assert np.abs(wrong - logits).max() > 1e-2  # the statistics matter
    centered = torch_import.import_checkpoint(path, preset="smoothadv")
    assert centered.spec["normalization"] == "mean" and "std" not in centered.spec["model_kwargs"]
    explicit = torch_import.import_checkpoint(path, preset="cohen", mean=SIAM_STATS[0], std=SIAM_STATS[1])
    np.testing.assert_allclose(explicit.model.apply(explicit.variables, images), logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown normalisation preset 'bogus'; choose one of: cohen, smoothadv, "
                                         "siam, torchvision"):
        torch_import.import_checkpoint(path, preset="bogus")
    resnet = next(n for n in IMPORTABLE if "torchvision" in n)
    with pytest.raises(ValueError, match="preset 'siam' has statistics for cifar10 networks only; this checkpoint is "
                                         "a network for imagenet: choose one of cohen, smoothadv, torchvision"):
        torch_import.import_checkpoint(FIXTURES / f"{resnet}.pth.tar", preset="siam")


def test_clean_accuracy_on_an_npz_counts_correct_predictions(tmp_path):
    path, images, logits, _ = _fixture("siam_resnet8_zip")
    imported = torch_import.import_checkpoint(path)
    labels = logits.argmax(-1)
    labels[:2] = (labels[:2] + 1) % 10  # two wrong labels
    npz = tmp_path / "check-test.npz"
    np.savez(npz, x=np.round(images * 255).astype(np.uint8), y=labels)
    accuracy, count = torch_import.clean_accuracy(imported, npz, batch_size=3)
    assert count == len(labels) and accuracy == pytest.approx((len(labels) - 2) / len(labels))


def test_load_returns_model_and_variables_and_says_what_it_inferred(capsys):
    path, images, logits, _ = _fixture("cohen_cifar_resnet8_noise_0.50_zip")
    model, variables = torch_import.load(path, arch="cifar_resnet8", num_classes=10)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_allclose(model.apply(variables, images), logits, atol=1e-4, rtol=1e-4)
    err = capsys.readouterr().err
    assert "cifar_resnet8" in err and "sigma: 0.5" in err and "mean_std" in err


def test_wrong_normalisation_is_flagged_and_changes_logits():
    # SmoothAdv's centering layer read as Cohen's mean/std layer: the documented ~30 % accuracy failure.
    path, images, logits, _ = _fixture("smoothadv_cifar_resnet8_noise_0.25_zip")
    imported = torch_import.import_checkpoint(path, normalization="mean_std")
    assert "WARNING" in imported.notes[-1] and "looks like mean" in imported.notes[-1]
    out = np.asarray(imported.model.apply(imported.variables, images))
    assert np.abs(out - logits).max() > 1e-2
    # A sigma that does not fit the first layer's noise floor (twice the training one) decides nothing: the default
    # is used and the note asks about sigma.
    cohen = FIXTURES / "cohen_cifar_resnet8_noise_0.50_zip.pth.tar"
    note = torch_import.import_checkpoint(cohen, sigma=1.0).notes[-1]
    assert "is sigma right?" in note and "defaulting to mean/std" in note
    assert torch_import.sigma_from_path("a/noise_0.12/b/noise_1.00/checkpoint.pth.tar") == 1.0
    assert torch_import.sigma_from_path("models/checkpoint.pth.tar") is None


def test_noise_floor_ratio_closed_form():
    # Channel c's variance is sigma^2 * sum_k s_k^2 |w_ck|^2 * (1 + extra_c); rho is the minimum of (1 + extra_c)
    # under the true scales, and that divided/multiplied by the scale ratio under the other hypothesis.
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3))
    std, sigma, extra = np.array([0.2, 0.25, 0.5]), 0.3, np.array([0.5, 0.1, 2.0, 0.3])
    norms = np.square(w).sum(axis=(2, 3))
    var = sigma**2 * (norms @ (1 / std**2)) * (1 + extra)
    ratios = noise_floor_ratios(w, var, sigma, std)
    assert ratios["mean_std"] == pytest.approx(1.1)
    assert ratios["mean"] == pytest.approx(np.min(var / norms.sum(axis=1)) / sigma**2)


def test_imagenet32_arch_is_the_cifar_resnet_with_1000_classes():
    assert layouts.arch_expectation("imagenet32_resnet110") == {"family": "cifar_resnet", "depth": 110,
                                                               "dataset": "imagenet32"}
    assert layouts.arch_expectation("cifar_resnet110")["depth"] == 110
    imported = torch_import.import_checkpoint(FIXTURES / "smoothadv_imagenet32_resnet8_noise_0.25_zip.pth.tar")
    assert imported.spec["dataset"] == "imagenet32" and imported.spec["num_classes"] == 1000


# ---------------------------------------------------------------------------------------------- bad input


def _error(path, **kw) -> str:
    with pytest.raises(ValueError) as info:
        torch_import.import_checkpoint(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "not a PyTorch checkpoint" in _error(text)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, x=np.zeros(3))
    assert "data.pkl" in _error(npz)  # a zip archive, but not torch.save's
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert "not a PyTorch checkpoint" in _error(plain)
    assert "cannot read" in _error(tmp_path / "missing.pth.tar")


@pytest.mark.parametrize("name", ["cohen_cifar_resnet8_noise_0.50_zip", "siam_resnet8_legacy"])
@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_file(tmp_path, name, fraction):
    raw = (FIXTURES / f"{name}.pth.tar").read_bytes()
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(raw[: int(len(raw) * fraction)])
    message = _error(cut)
    assert "truncated" in message or "corrupt" in message


def test_wrong_arch_and_class_count():
    path = FIXTURES / "cohen_cifar_resnet8_noise_0.50_zip.pth.tar"
    assert "depth 110" in _error(path, arch="cifar_resnet110") and "depth 8" in _error(path, arch="cifar_resnet110")
    assert "does not fit" in _error(path, arch="resnet50")
    assert "unsupported arch 'vgg16'" in _error(path, arch="vgg16")
    assert "num_classes=100 does not match" in _error(path, num_classes=100)
    assert "unknown normalization" in _error(path, normalization="zscore")


def _rewrite_pickle(src: Path, dst: Path, old: bytes, new: bytes) -> None:
    """Copies a zip-format checkpoint, replacing a same-length string inside its data.pkl."""
    assert len(old) == len(new)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zout.writestr(item, data)


def test_unknown_and_missing_layer_keys(tmp_path):
    src = FIXTURES / "cohen_cifar_resnet8_noise_0.50_zip.pth.tar"
    _rewrite_pickle(src, tmp_path / "a.pth.tar", b"1.fc.bias", b"1.fc.bian")
    message = _error(tmp_path / "a.pth.tar")
    assert "unexpected keys" in message and "1.fc.bian" in message
    _rewrite_pickle(src, tmp_path / "b.pth.tar", b"1.bn1.running_var", b"1.bn1.extra_stats")
    assert "1.bn1.extra_stats" in _error(tmp_path / "b.pth.tar")
    _rewrite_pickle(src, tmp_path / "c.pth.tar", b"1.layer1.0.conv2.weight", b"1.layer1.0.convX.weight")
    assert "layer1.0.convX.weight" in _error(tmp_path / "c.pth.tar")


def test_missing_and_misshaped_tensors_are_named():
    import jax
    import jax.numpy as jnp

    from smoothjax.models import get_model

    state = load_checkpoint(FIXTURES / "cohen_cifar_resnet8_noise_0.50_zip.pth.tar")["state_dict"]
    model = get_model("cifar_resnet8", 10, mean=(0.5,) * 3, std=(0.25,) * 3)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    missing = dict(state)
    del missing["1.layer2.0.bn2.running_mean"]
    split = layouts.split_state_dict(missing)
    with pytest.raises(ValueError, match="lacks the tensor for cifar_resnet8 variable batch_stats/BasicBlock_1/"
                                         "BatchNorm_1/mean"):
        layouts.to_variables(split, layouts.infer_network(split), target, "cifar_resnet8")
    misshaped = dict(state, **{"1.layer3.0.conv1.weight": np.zeros((64, 32, 1, 1), np.float32)})
    split = layouts.split_state_dict(misshaped)
    with pytest.raises(ValueError, match=r"1.layer3.0.conv1.weight has shape \(64, 32, 1, 1\) but cifar_resnet8 "
                                         r"expects \(64, 32, 3, 3\)"):
        layouts.to_variables(split, layouts.infer_network(split), target, "cifar_resnet8")


def test_siam_pni_cpni_is_refused_by_name():
    message = _error(FIXTURES / "siam_cpni_resnet8_zip.pth.tar")
    assert "PNI/CPNI" in message and "conv1.alphad_w" in message


# ------------------------------------------------------------------------------------- restricted unpickling


def _zip_checkpoint(path: Path, data_pkl: bytes, storages: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def _legacy_checkpoint(path: Path, main_pickle: bytes, storages: dict) -> Path:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    tail = pickle.dumps(sorted(storages), protocol=2)
    for key in sorted(storages):
        tail += struct.pack("<q", len(storages[key]) // 4) + storages[key]
    path.write_bytes(head + main_pickle + tail)
    return path


def _s(text: str) -> bytes:  # BINUNICODE
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:  # BININT
    return b"J" + struct.pack("<i", v)


def _tensor_pickle(numel: int, size: tuple, stride: tuple, offset: int = 0) -> bytes:
    """Hand-assembled protocol-2 pickle of {'w': tensor} as torch.save writes it (a float32 storage '0')."""
    tup = lambda items: b"(" + b"".join(_int(v) for v in items) + b"t"  # noqa: E731
    return (b"\x80\x02}" + _s("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + b"(" + _s("storage") + b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu") + _int(numel) + b"tQ"
            + _int(offset) + tup(size) + tup(stride) + b"\x89ccollections\nOrderedDict\n)Rt" + b"Rs.")


@pytest.mark.parametrize("writer", [_zip_checkpoint, _legacy_checkpoint])
def test_hand_made_tensor_views(tmp_path, writer):
    # Independent of torch: a (3, 2) view with strides (1, 3) at offset 1 of the storage 0..9 is arange-based.
    storage = np.arange(10, dtype=np.float32)
    path = writer(tmp_path / "t.pth", _tensor_pickle(10, (3, 2), (1, 3), offset=1), {"0": storage.tobytes()})
    expected = np.lib.stride_tricks.as_strided(storage[1:], (3, 2), (4, 12))
    np.testing.assert_array_equal(load_checkpoint(path)["w"], expected)
    bad = writer(tmp_path / "bad.pth", _tensor_pickle(10, (4, 4), (4, 1)), {"0": storage.tobytes()})
    with pytest.raises(ValueError, match="reads past the end of storage"):
        load_checkpoint(bad)


def test_harmless_extras_load(tmp_path):
    # Checkpoints may carry NumPy scalars, training arguments and sets; protocol 2 pickles bytes via _codecs.
    extras = {"best_prec1": np.float64(0.875), "tags": {1, 2}, "raw": b"\x00\xff"}
    loaded = load_checkpoint(_zip_checkpoint(tmp_path / "x.pth", pickle.dumps(extras, protocol=2), {}))
    assert loaded == {"best_prec1": 0.875, "tags": {1, 2}, "raw": b"\x00\xff"}
    assert isinstance(loaded["best_prec1"], np.float64)
    # {"args": argparse.Namespace(lr=0.1, arch="x")} as pickle.dumps(..., protocol=2) writes it, opcode by opcode.
    namespace = (b"\x80\x02}(" + _s("args") + b"cargparse\nNamespace\n)\x81}(" + _s("lr") + b"G"
                 + struct.pack(">d", 0.1) + _s("arch") + _s("x") + b"ubu.")
    loaded = load_checkpoint(_zip_checkpoint(tmp_path / "args.pth", namespace, {}))
    assert loaded == {"args": {"lr": 0.1, "arch": "x"}}


class _RunsCode:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


@pytest.mark.parametrize("writer", [_zip_checkpoint, _legacy_checkpoint])
def test_malicious_pickle_fails_safely(tmp_path, writer):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _RunsCode(f"touch {sentinel}")}, protocol=2)
    path = writer(tmp_path / "evil.pth.tar", payload, {})
    with pytest.raises(UnsafeCheckpointError, match="system") as info:
        torch_import.load(path)
    assert "\n" not in str(info.value) and "refusing" in str(info.value)
    assert not sentinel.exists()
    pickle.loads(payload)
    assert sentinel.exists()


def test_pickle_cannot_tamper_with_allowed_objects(tmp_path):
    # BUILD with slot state would setattr on the allow-listed FloatStorage stand-in; it must be refused, and a
    # later load must still see float32.
    tamper = b"\x80\x02ctorch\nFloatStorage\n(N}" + _s("dtype") + _s("int8") + b"stb."
    with pytest.raises(UnsafeCheckpointError, match="set attribute 'dtype'"):
        load_checkpoint(_zip_checkpoint(tmp_path / "t.pth", tamper, {}))
    code = b"\x80\x02cbuiltins\neval\n(" + _s("1+1") + b"tR."
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        load_checkpoint(_legacy_checkpoint(tmp_path / "e.pth", code, {}))
    storage = np.arange(4, dtype=np.float32)
    ok = load_checkpoint(_zip_checkpoint(tmp_path / "ok.pth", _tensor_pickle(4, (4,), (1,)), {"0": storage.tobytes()}))
    assert ok["w"].dtype == np.float32


def test_no_torch_needed():
    if "torch" in sys.modules:
        pytest.skip("another test imported torch")
    torch_import.import_checkpoint(FIXTURES / "siam_resnet8_zip.pth.tar")
    assert "torch" not in sys.modules


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_a_workdir_that_load_model_reads(tmp_path, capsys):
    name = "smoothadv_cifar_resnet8_noise_0.25_zip"
    path, images, logits, _ = _fixture(name)
    workdir = tmp_path / "run"
    assert cli_main([str(path), "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "sigma: 0.25, read from the path" in out and "certify.py --config=configs/cifar10.py" in out
    spec = json.loads((workdir / "model.json").read_text())
    assert spec["sigma"] == 0.25 and spec["normalization"] == "mean" and spec["model"] == "cifar_resnet8"
    model, variables = checkpointing.load_model(workdir)
    np.testing.assert_allclose(model.apply(variables, images), logits, atol=1e-4, rtol=1e-4)
    # A second import into the same workdir is refused with one line.
    assert cli_main([str(path), "--workdir", str(workdir)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_cli_needs_sigma_when_the_path_has_none(tmp_path, capsys):
    siam = FIXTURES / "siam_resnet8_zip.pth.tar"
    assert cli_main([str(siam), "--workdir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "pass --sigma" in err and err.count("\n") == 1
    assert cli_main([str(siam), "--workdir", str(tmp_path / "b"), "--sigma", "0.5", "--preset", "siam",
                     "--check_data", str(_fixture_npz(tmp_path))]) == 0
    assert json.loads((tmp_path / "b" / "model.json").read_text())["sigma"] == 0.5
    out = capsys.readouterr().out
    assert "preset 'siam', as requested" in out and "clean accuracy of the imported base classifier on" in out
    evil = _zip_checkpoint(tmp_path / "evil.pth", pickle.dumps(_RunsCode("true"), protocol=2), {})
    assert cli_main([str(evil), "--workdir", str(tmp_path / "c"), "--sigma", "0.5"]) == 2
    assert "refusing to unpickle posix.system" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def _fixture_npz(tmp_path):
    """The SIAM fixture's images labelled with PyTorch's predictions, as an .npz test set."""
    _, images, logits, _ = _fixture("siam_resnet8_zip")
    np.savez(tmp_path / "check-test.npz", x=np.round(images * 255).astype(np.uint8), y=logits.argmax(-1))
    return tmp_path / "check-test.npz"
