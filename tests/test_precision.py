"""Float32 noise whatever the image dtype, bfloat16 models, and the numbers of the code before that change.

The pinned values were computed with the code of main before noise moved to float32 (commit 57dfc4e): for float32
images and default settings every count, certificate and attack output must stay bit for bit what it was, since
the committed certification logs are re-derived from them.
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax import certification, models, noise, smoothadv

# Computed on main at 57dfc4e (tests/test_precision.py's _setup, key numbers as below).
PINNED_COUNTS = [[5, 116, 87, 3, 19, 13, 5, 50, 1, 1], [6, 152, 79, 0, 28, 6, 0, 29, 0, 0],
                 [7, 59, 185, 0, 12, 6, 0, 24, 6, 1]]
PINNED_P_LOWER = [0.2861012816429138, 0.3945862650871277, 0.48345789313316345]
PINNED_COUNT, PINNED_GUESS = [78, 101, 119], [1, 1, 2]
PINNED_HASHES = {"train_noise": "672adfbe08c26b24", "copies": "1d3b528c283e23a0", "pgd": "4a92431d582b418b",
                 "ddn": "87852ed3f25cbefc"}


def _digest(a) -> str:
    return hashlib.sha256(np.asarray(a).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def setup():
    model = models.get_model("small_cnn", 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
    return models.make_apply_fn(model), variables, x


def test_float32_numbers_are_those_of_the_code_before(setup):
    apply_fn, variables, x = setup
    counts = certification.sample_counts(jax.random.key(2), apply_fn, variables, x, sigma=0.5, num=300,
                                         batch_size=64, num_classes=10)
    np.testing.assert_array_equal(counts, PINNED_COUNTS)
    cert = certification.certify(jax.random.key(3), apply_fn, variables, x, sigma=0.5, n0=20, n=200, alpha=0.001,
                                 batch_size=64, num_classes=10)
    np.testing.assert_array_equal(cert.p_a_lower, np.float32(PINNED_P_LOWER))
    np.testing.assert_array_equal(cert.count, PINNED_COUNT)
    np.testing.assert_array_equal(cert.guess, PINNED_GUESS)
    got = {"train_noise": _digest(noise.add_gaussian_noise(jax.random.key(4), x, 0.25)),
           "copies": _digest(noise.noisy_copies(jax.random.key(5), x, 0.25, 2))}
    eta = noise.gaussian_noise(jax.random.key(6), (2, *x.shape), 0.25)
    y = jnp.array([1, 2, 3])
    got["pgd"] = _digest(smoothadv.smooth_pgd_l2(apply_fn, variables, x, y, eta, epsilon=0.5, num_steps=3,
                                                 key=jax.random.key(7)))
    got["ddn"] = _digest(smoothadv.smooth_ddn(apply_fn, variables, x, y, eta, epsilon=0.5, num_steps=3,
                                              key=jax.random.key(8)))
    assert got == PINNED_HASHES


def test_bfloat16_images_give_the_counts_of_the_same_images_in_float32(setup):
    apply_fn, variables, x = setup
    x16 = x.astype(jnp.bfloat16)
    common = dict(sigma=0.5, num=300, batch_size=64, num_classes=10)
    c16 = certification.sample_counts(jax.random.key(2), apply_fn, variables, x16, **common)
    c32 = certification.sample_counts(jax.random.key(2), apply_fn, variables, x16.astype(jnp.float32), **common)
    np.testing.assert_array_equal(c16, c32)
    assert int(np.sum(np.asarray(c16) != np.asarray(PINNED_COUNTS))) > 0  # the rounded images are other images
    cert16 = certification.certify(jax.random.key(3), apply_fn, variables, x16, sigma=0.5, n0=20, n=200,
                                   alpha=0.001, batch_size=64, num_classes=10)
    cert32 = certification.certify(jax.random.key(3), apply_fn, variables, x16.astype(jnp.float32), sigma=0.5,
                                   n0=20, n=200, alpha=0.001, batch_size=64, num_classes=10)
    for a, b in zip(cert16, cert32):
        np.testing.assert_array_equal(a, b)


def test_noise_of_bfloat16_images_is_float32_gaussian():
    x16 = jnp.full((64, 8, 8, 1), 0.5, jnp.bfloat16)
    noisy = noise.add_gaussian_noise(jax.random.key(0), x16, 1.0)
    assert noisy.dtype == jnp.float32
    z = np.asarray(noisy, np.float64).ravel() - 0.5
    assert len(np.unique(z)) > 4000  # bfloat16 noise has ~ 8 bits of mantissa: a few hundred values in [-4, 4]
    np.testing.assert_array_equal(noisy, noise.add_gaussian_noise(jax.random.key(0), x16.astype(jnp.float32), 1.0))
    import scipy.stats
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    copies = noise.noisy_copies(jax.random.key(1), x16[:2], 0.25, 3)
    assert copies.dtype == jnp.float32 and copies.shape == (3, 2, 8, 8, 1)


@pytest.mark.parametrize("name,shape,kw", [("small_cnn", (2, 8, 8, 1), {}), ("cifar_resnet20", (2, 32, 32, 3), {}),
                                           ("resnet50", (1, 64, 64, 3), {"stage_sizes": (1, 1, 1, 1)})])
def test_models_build_in_bfloat16(name, shape, kw):
    model = models.get_model(name, 10, dtype=jnp.bfloat16, **kw)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros(shape))
    assert {l.dtype for l in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}  # params and BN stats
    x = jax.random.uniform(jax.random.key(1), shape)
    logits = jax.jit(models.make_apply_fn(model))(variables, x)
    assert logits.dtype == jnp.float32 and logits.shape == (shape[0], 10)
    ref = models.make_apply_fn(models.get_model(name, 10, **kw))(variables, x)  # same weights in float32
    scale = float(jnp.max(jnp.abs(ref))) + 1e-6
    err = float(jnp.max(jnp.abs(logits - ref))) / scale
    assert 0 < err < 0.1  # rounded to bfloat16 (so not float32), close to the float32 network


# SIAM's evaluation and NAttack, computed on main at 5871db7 (before their noise moved to float32) with the setup of
# _siam_numbers, under the tests' XLA flags (conftest): the float32 numbers must not move.
PINNED_SIAM = {"scores": "3efc573253394344", "builtin": "a948dd808eb47dd8", "pgd": "6b3050f6d0dd1358",
               "nattack": "7c611369eec7b7e6"}


def _siam_numbers(x):
    """The smoothed scores (noisy_apply_fn, m = 4), the model's built-in input noise, EPGD and one NAttack step."""
    from smoothjax.siam import evaluation, inference, linf_attacks
    from smoothjax.siam.nattack import make_nattack_step

    model = models.get_model("cifar_resnet8_pni", 10, noise_sd=0.1)
    v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    y, key = jnp.array([1, 2]), jax.random.key(3)
    one = evaluation.noisy_apply_fn(model, jnp.asarray(evaluation.as_noise_sd(0.1, 3)))
    step = make_nattack_step(lambda im: jax.nn.softmax(im.reshape(im.shape[0], -1)[:, :10] * 5.0, -1), population=6)
    mu = 0.001 * jax.random.normal(jax.random.key(5), x.shape)
    mu_new, _, adv = step(x, y, mu, jnp.zeros((2,), bool), jax.random.key(6), 0.03)
    return {"scores": inference.smoothed_scores(key, one, v, x, num_samples=4, mode="mean_logits"),
            "builtin": models.make_stochastic_apply_fn(model)(v, x, key),
            "pgd": linf_attacks.pgd_linf(one, v, x, y, key, epsilon=8 / 255, num_steps=3, num_passes=2),
            "nattack": jnp.concatenate([mu_new.ravel(), adv.ravel()])}


def test_siam_noise_is_float32_whatever_the_image_dtype():
    """Float32 images: SIAM's evaluation, the stochastic ResNet's input noise, EPGD and NAttack give the numbers of
    main before the change (hashes). Bfloat16 images: exactly the numbers of their float32 copies."""
    x32 = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    got = _siam_numbers(x32)
    assert {k: _digest(v) for k, v in got.items()} == PINNED_SIAM
    x16 = x32.astype(jnp.bfloat16)
    low, wide = _siam_numbers(x16), _siam_numbers(x16.astype(jnp.float32))
    for name in PINNED_SIAM:
        assert low[name].dtype == jnp.float32, name
        np.testing.assert_array_equal(np.asarray(low[name]), np.asarray(wide[name]), err_msg=name)


# sample_counts on the job's per-image keys fold_in(key(0), idx), idx = 0, 5, 7, computed on main at 5871db7 (before
# config.certify.key_impl existed) with the setup of ``setup``: the threefry default must not move.
PINNED_JOB_KEY_COUNTS = [[1, 114, 91, 4, 17, 14, 1, 56, 2, 0], [8, 146, 86, 0, 21, 8, 0, 31, 0, 0],
                         [9, 57, 172, 0, 12, 12, 0, 32, 5, 1]]


def test_default_key_impl_gives_the_counts_of_before_and_rbg_other_valid_counts(setup):
    from smoothjax.jobs.certify import image_keys

    apply_fn, variables, x = setup
    idx = jnp.array([0, 5, 7], jnp.int32)
    counts = {impl: np.asarray(certification.sample_counts(image_keys(0, idx, impl), apply_fn, variables, x,
                                                           sigma=0.5, num=300, batch_size=100, num_classes=10))
              for impl in ("threefry", "rbg", "unsafe_rbg")}
    assert counts["threefry"].tolist() == PINNED_JOB_KEY_COUNTS
    for impl in ("rbg", "unsafe_rbg"):
        assert counts[impl].sum(1).tolist() == [300] * 3 and counts[impl].tolist() != PINNED_JOB_KEY_COUNTS, impl
        # the same smoothed classifier: top class agrees on these clear-cut images
        assert counts[impl].argmax(1).tolist() == counts["threefry"].argmax(1).tolist(), impl
