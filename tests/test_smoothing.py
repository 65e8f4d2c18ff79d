"""SIAM's four inference rules against a plain-NumPy re-derivation (loops, no vectorised shortcuts), with ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax.siam import inference as smoothing


def _numpy_scores(logits: np.ndarray, mode: str) -> np.ndarray:
    m, b, k = logits.shape
    scores = np.zeros((b, k))
    for i in range(b):
        if mode == "single":
            return logits[0].astype(np.float64)
        for j in range(m):
            row = [float(v) for v in logits[j, i]]
            if mode == "vote":
                best = 0
                for c in range(k):  # First maximum: ties go to the lower class.
                    if row[c] > row[best]:
                        best = c
                scores[i, best] += 1
            elif mode == "mean_logits":
                for c in range(k):
                    scores[i, c] += row[c] / m
            elif mode == "rank_weighted":
                order = sorted(range(k), key=lambda c: (-row[c], c))
                for r, c in enumerate(order):
                    scores[i, c] += 2.0 ** (-r)
    return scores


def _numpy_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.array([sorted(range(scores.shape[1]), key=lambda c: (-scores[i, c], c))[:k]
                     for i in range(scores.shape[0])])


# 3 passes, 3 images, 4 classes. Image 0: pass 0 ties classes 1 and 3; image 1: a 1-1-1 vote tie; image 2: a
# pass with all logits equal (ranks 0..3 in class order).
LOGITS = np.array([
    [[0.0, 2.0, -1.0, 2.0], [5.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
    [[0.5, 3.0, 0.1, 2.9], [0.0, 4.0, 0.0, 1.0], [0.0, 2.0, 0.0, 3.0]],
    [[1.0, 0.0, 0.0, 4.0], [0.0, 0.0, 6.0, 1.0], [2.0, 1.0, 0.0, 0.5]],
], np.float32)


@pytest.mark.parametrize("mode", smoothing.MODES)
def test_rules_match_numpy_rederivation(mode):
    got = np.asarray(smoothing.class_scores(jnp.asarray(LOGITS), mode))
    want = _numpy_scores(LOGITS, mode)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for k in (1, 2, 4):
        np.testing.assert_array_equal(np.asarray(smoothing.top_k_classes(jnp.asarray(got), k)), _numpy_top_k(want, k))


def test_rank_weights_and_ties_by_hand():
    """Closed forms (LOGITS is [pass, image, class]): 2^-rank weights of image 2 and the vote ties."""
    rank = np.asarray(smoothing.class_scores(jnp.asarray(LOGITS), "rank_weighted"))
    # Image 2: pass 0 [1,1,1,1] ranks classes 0,1,2,3; pass 1 [0,2,0,3] ranks 3,1,0,2; pass 2 [2,1,0,.5] ranks 0,1,3,2.
    np.testing.assert_allclose(rank[2], [1 + .25 + 1, .5 + .5 + .5, .25 + .125 + .125, .125 + 1 + .25])
    votes = np.asarray(smoothing.class_scores(jnp.asarray(LOGITS), "vote"))
    np.testing.assert_array_equal(votes[0], [0, 2, 0, 1])  # pass 0 ties classes 1 and 3: the vote goes to 1
    np.testing.assert_array_equal(votes[1], [1, 1, 1, 0])  # three-way tie
    np.testing.assert_array_equal(np.asarray(smoothing.top_k_classes(jnp.asarray(votes), 2))[1], [0, 1])


def _fake_apply(variables, images, key, input_noise=True):
    """Logits = W x + (input noise ? N(0, 1) per image and class : 0) + a per-pass offset shared by the batch."""
    k1, k2 = jax.random.split(key)
    logits = images.reshape(images.shape[0], -1) @ variables["w"]
    shared = jax.random.normal(k2, (1, logits.shape[1]))
    noise = jax.random.normal(k1, logits.shape) if input_noise else 0.0
    return logits + noise + shared


@pytest.mark.parametrize("mode", ["vote", "mean_logits", "rank_weighted"])
def test_smoothed_predict_combines_the_passes_of_split_keys(mode):
    variables = {"w": jax.random.normal(jax.random.key(1), (12, 5)) * 0.3}
    x = jax.random.uniform(jax.random.key(2), (6, 2, 2, 3))
    key, m = jax.random.key(3), 9
    passes = np.stack([np.asarray(_fake_apply(variables, x, k)) for k in jax.random.split(key, m)])
    want = _numpy_top_k(_numpy_scores(passes, mode), 3)
    for chunk in (None, 4):
        got = smoothing.smoothed_predict(key, _fake_apply, variables, x, num_samples=m, mode=mode, top_k=3,
                                         chunk_size=chunk)
        np.testing.assert_array_equal(np.asarray(got), want)


def test_single_mode_is_one_pass_without_input_noise():
    variables = {"w": jax.random.normal(jax.random.key(1), (12, 5))}
    x = jax.random.uniform(jax.random.key(2), (4, 2, 2, 3))
    key = jax.random.key(5)
    want = np.asarray(_fake_apply(variables, x, jax.random.split(key, 1)[0], input_noise=False))
    got = smoothing.smoothed_scores(key, _fake_apply, variables, x, num_samples=50, mode="single")
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_bad_arguments_raise_one_line_errors():
    with pytest.raises(ValueError, match="smoothing mode 'median'"):
        smoothing.class_scores(jnp.asarray(LOGITS), "median")
    with pytest.raises(ValueError, match="top_k=5"):
        smoothing.top_k_classes(jnp.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="num_samples=0"):
        smoothing.smoothed_predict(jax.random.key(0), _fake_apply, {"w": jnp.zeros((12, 5))}, jnp.zeros((1, 2, 2, 3)),
                                   num_samples=0, mode="vote")


def _deterministic_apply(variables, images):
    return images.reshape(images.shape[0], -1) @ variables["w"]


def test_smoothed_predict_returns_one_class_per_image_like_certification_predict():
    variables = {"w": jax.random.normal(jax.random.key(1), (12, 5)) * 0.3}
    x = jax.random.uniform(jax.random.key(2), (6, 2, 2, 3))
    key, m = jax.random.key(3), 9
    passes = np.stack([np.asarray(_fake_apply(variables, x, k)) for k in jax.random.split(key, m)])
    got = smoothing.smoothed_predict(key, _fake_apply, variables, x, num_samples=m, mode="vote")
    assert got.shape == (6,) and got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), _numpy_top_k(_numpy_scores(passes, "vote"), 1)[:, 0])


def test_deterministic_apply_fn_is_one_pass_and_refuses_identical_passes():
    """The one convention: a deterministic apply_fn(variables, images) smooths over m = 1 (its own argmax) and
    raises for m > 1, also when it comes wrapped by make_stochastic_apply_fn (which marks it deterministic)."""
    from smoothjax.models import get_model, is_stochastic, make_apply_fn, make_stochastic_apply_fn

    variables = {"w": jax.random.normal(jax.random.key(1), (12, 5))}
    x = jax.random.uniform(jax.random.key(2), (4, 2, 2, 3))
    want = np.argmax(np.asarray(x).reshape(4, -1) @ np.asarray(variables["w"]), -1)
    for mode in ("vote", "single"):
        got = smoothing.smoothed_predict(jax.random.key(0), _deterministic_apply, variables, x, num_samples=1,
                                         mode=mode)
        np.testing.assert_array_equal(np.asarray(got), want)
    with pytest.raises(ValueError, match="num_samples=4 passes of a deterministic apply_fn"):
        smoothing.smoothed_predict(jax.random.key(0), _deterministic_apply, variables, x, num_samples=4, mode="vote")
    model = get_model("small_cnn", 10)
    assert not is_stochastic(make_apply_fn(model)) and not is_stochastic(make_stochastic_apply_fn(model))
    assert is_stochastic(_fake_apply) and is_stochastic(make_stochastic_apply_fn(get_model("cifar_resnet8_pni", 10)))
    mv = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="num_samples=3 passes"):
        smoothing.smoothed_scores(jax.random.key(0), make_stochastic_apply_fn(model), mv, jnp.zeros((2, 8, 8, 1)),
                                  num_samples=3, mode="mean_logits")


def test_noisy_apply_fn_smooths_a_deterministic_model_with_gaussian_input_noise():
    """siam.noisy_apply_fn gives a deterministic model input noise: its m passes are the model on x + sd * z_j
    with z_j = normal(split(split(key, m)[j])[0]) (re-derived here pass by pass)."""
    from smoothjax.models import get_model, make_apply_fn
    from smoothjax.siam.evaluation import noisy_apply_fn

    model = get_model("small_cnn", 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1))
    sd, key, m = 0.3, jax.random.key(4), 5
    got = smoothing.stochastic_logits(key, noisy_apply_fn(model, jnp.float32(sd)), variables, x, num_samples=m)
    base = make_apply_fn(model)
    for j, k in enumerate(jax.random.split(key, m)):
        z = jax.random.normal(jax.random.split(k)[0], x.shape)
        np.testing.assert_allclose(np.asarray(got[j]), np.asarray(base(variables, x + sd * z)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(got[0]), np.asarray(got[1]))
