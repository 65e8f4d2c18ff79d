"""The modes of certify.py: one object per mode, each with the same few methods, chosen by name from the config.

``get(config.certify)`` returns the mode the settings name, as big_vision picks an evaluator by name:

* ``certify``: ``mode='certify'``, log ``certify_sigma_0.25.tsv``;
* ``certify_randomized``: ``mode='certify', randomized_cp=True``, log ``certify_randomized_sigma_0.25.tsv``;
* ``predict``: ``mode='predict'``, log ``predict_sigma_0.25.tsv`` (no radius column);
* ``predict_attacked``: ``mode='predict', attack='pgd'|'ddn'``, log ``predict_pgd_eps_0.5_steps_20_m_8_sigma_0.25.tsv``;
* ``sequential``: ``mode='sequential'`` (``radii``, ``max_samples``, ``cs_method``, ``futility``), log
  ``sequential_sigma_0.25.tsv`` with a ``samples`` column.

``sound=True`` (every mode but ``predict_attacked``) draws the exact grid noise of ``certification.sound_noise``:
inputs are rounded to the 1/255 grid first (``prepare``; the digits are k/16, so they move by up to 1/510 and each
certificate is for the rounded image) and the log name gets ``_sound``. ``tag`` adds a last name part.

Every mode has:

* ``validate(cc, sigma)``: a one-line ValueError naming the first bad ``config.certify`` value (no JAX call);
* ``settings(cc, sigma)``: every setting that changes the rows, for the log's sidecar (options at their defaults are
  left out, so logs written before an option existed are still continued);
* ``log_name(cc, sigma)`` and ``kind`` (the log's columns: ``analysis.logs.COLUMNS[kind]``);
* ``describe(cc, sigma)``: progress lines; ``draws(cc)``: the ``n`` of the progress line;
* ``prepare(cc, images)``: the images as evaluated (sound: rounded to the grid) and a note when that moved them;
* ``evaluator(cc, sigma, apply_fn, num_classes)``: ``evaluate(keys (B,), variables, x (B, H, W, C), y (B,)) ->
  (prediction (B,) int32, radius (B,) float32 pixels, samples (B,) int32)``, jittable; image b's row depends only
  on its key ``keys[b]`` and the image, never on batching, devices or processes.

Certification depends on no attack code; only ``predict_attacked`` brings in ``smoothjax.smoothadv``.
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import analysis, certification, smoothadv
from smoothjax.certification import sound_noise
from smoothjax.certification.sequential import check_futility, check_radii
from smoothjax.certification.sequential import METHODS as SEQUENTIAL_METHODS
from smoothjax.noise import ATTACK_STREAM

MODE_NAMES = ("certify", "predict", "sequential")  # the values of config.certify.mode
DEFAULT_GRID_STEP = 0.25  # radii='' means 0, 0.25, 0.5, ... up to 3 sigma (pixel units)
_ATTACKS = ("none", "pgd", "ddn")
_SOUND = "exact 1/255 grid noise; inputs rounded to the 1/255 grid"


def _flag(cc, name: str) -> bool:
    if not isinstance(cc[name], bool):
        raise ValueError(f"certify.{name}={cc[name]!r} is not allowed; use True or False")
    return cc[name]


def _integer(cc, name: str, low: int = 1) -> int:
    value = cc[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"certify.{name}={value!r} is not allowed; it must be an integer >= {low}")
    return value


def resolve_radii(value, sigma: float) -> tuple:
    """The sequential radius grid (pixel units) of ``certify.radii``: '' or None = ``0, 0.25, ...`` up to 3 sigma;
    a string ``'0,0.25,0.5'`` or ``'start:stop:step'`` (stop inclusive); or a sequence of numbers. Raises a one-line
    ValueError unless the grid is non-empty, finite, >= 0 and strictly increasing."""
    try:
        if value is None or (isinstance(value, str) and not value.strip()):
            return check_radii(DEFAULT_GRID_STEP * np.arange(int(np.floor(3 * sigma / DEFAULT_GRID_STEP + 1e-9)) + 1))
        return check_radii(analysis.parse_radii(value) if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"certify.radii={value!r} is not allowed; use '' (0, 0.25, ... up to 3 sigma), "
                         "'0,0.25,0.5' or 'start:stop:step' with increasing radii >= 0") from None


class Mode:
    """The interface, and what every mode shares: the common settings, sound noise and the log name."""

    name = ""
    kind = "certify"  # the log's columns
    row_keys: tuple = ()  # config.certify fields recorded in the sidecar
    randomized = attacked = False  # what the mode is; validate refuses options of another mode

    def validate(self, cc, sigma: float) -> None:
        if cc.mode not in MODE_NAMES:
            raise ValueError(f"certify.mode={cc.mode!r} is not allowed; choose one of: {', '.join(MODE_NAMES)}")
        if not (sigma > 0 and np.isfinite(sigma)):
            raise ValueError(f"certify.sigma={sigma} is not allowed; sigma must be a finite number > 0 (pixel units)")
        if not 0 < cc.alpha < 1:
            raise ValueError(f"certify.alpha={cc.alpha} is not allowed; alpha must be in (0, 1)")
        for name in ("n0", "n", "batch_size", "skip", "images_per_step"):
            _integer(cc, name)
        if not isinstance(cc.tag, str) or (cc.tag and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", cc.tag)):
            raise ValueError(f"certify.tag={cc.tag!r} is not allowed; use '' or letters, digits, '.' and '-' (e.g. "
                             "n100k)")
        if isinstance(cc.max, bool) or not isinstance(cc.max, int) or not (cc.max == -1 or cc.max >= 1):
            raise ValueError(f"certify.max={cc.max!r} is not allowed; use -1 (all images) or an integer >= 1")
        sound, randomized = _flag(cc, "sound"), _flag(cc, "randomized_cp")
        if randomized and not self.randomized:
            raise ValueError(f"certify.randomized_cp=True is not allowed with mode={cc.mode!r}; it applies to "
                             "mode='certify' only")
        if cc.attack not in _ATTACKS:
            raise ValueError(f"certify.attack={cc.attack!r} is not allowed; choose one of: {', '.join(_ATTACKS)}")
        if cc.attack != "none" and not self.attacked:
            raise ValueError(f"certify.attack={cc.attack!r} is not allowed with certify.mode={cc.mode!r}; attacks run "
                             "in predict mode (the certificate of an attacked image certifies nothing new)")
        if sound and self.attacked:
            raise ValueError(f"certify.sound=True is not allowed with attack={cc.attack!r}: an attacked image is off "
                             "the 1/255 grid; use attack='none'")

    def settings(self, cc, sigma: float) -> dict:
        out = {k: cc[k] for k in self.row_keys}
        if cc.sound:
            out["sound"] = _SOUND
        return out

    def name_parts(self, cc) -> tuple:
        return ("sound",) if cc.sound else ()

    def log_name(self, cc, sigma: float) -> str:
        return analysis.log_name(self.kind, sigma, self.name_parts(cc) + ((cc.tag,) if cc.tag else ()))

    def describe(self, cc, sigma: float) -> list:
        return ["sound: exact 1/255 grid noise (certification.sound_noise); inputs are rounded to the 1/255 grid"
                ] if cc.sound else []

    def draws(self, cc) -> int:
        return cc.n

    def prepare(self, cc, images) -> tuple:
        """float32 images as evaluated, and a note (None when nothing moved) for the progress output."""
        images = np.asarray(images, np.float32)
        if not cc.sound:
            return images, None
        levels = sound_noise.LEVELS
        rounded = (np.round(images.astype(np.float64) * levels) / levels).astype(np.float32)  # = float32(k / 255)
        moved = float(np.max(np.abs(rounded.astype(np.float64) - images), initial=0.0))
        return rounded, (f"sound: the images are off the 1/255 grid; they are rounded to it (pixels move by up to "
                         f"{moved:.5f}) and each certificate is for the rounded image" if moved > 0 else None)

    def evaluator(self, cc, sigma: float, apply_fn: Callable, num_classes: int) -> Callable:
        raise NotImplementedError

    @staticmethod
    def _common(cc, sigma: float, num_classes: int) -> dict:
        return dict(sigma=sigma, alpha=cc.alpha, batch_size=cc.batch_size, num_classes=num_classes, sound=cc.sound)


class Certify(Mode):
    """Cohen et al.'s CERTIFY (``certification.certify``): n0 selection draws, n estimation draws."""

    name, kind = "certify", "certify"
    row_keys = ("n0", "n", "alpha", "batch_size", "skip", "seed")
    certificate = staticmethod(certification.certify)

    def evaluator(self, cc, sigma, apply_fn, num_classes):
        def evaluate(keys, variables, x, y):
            cert = self.certificate(keys, apply_fn, variables, x, n0=cc.n0, n=cc.n,
                                    **self._common(cc, sigma, num_classes))
            return cert.prediction, cert.radius, jnp.full_like(cert.prediction, cc.n0 + cc.n)
        return evaluate


class RandomizedCertify(Certify):
    """CERTIFY with the randomized Clopper-Pearson bound (``certification.certify_randomized``): the same draws,
    certificates that also depend on one uniform draw, so they get a log of their own."""

    name, randomized = "certify_randomized", True
    certificate = staticmethod(certification.certify_randomized)

    def settings(self, cc, sigma):
        return {**super().settings(cc, sigma), "randomized_cp": True}

    def name_parts(self, cc):
        return super().name_parts(cc) + ("randomized",)

    def describe(self, cc, sigma):
        return super().describe(cc, sigma) + [
            "randomized Clopper-Pearson: each certificate also depends on one uniform draw (reported separately from "
            "deterministic certificates)"]


class Predict(Mode):
    """Cohen et al.'s PREDICT (``certification.predict``): n draws, a binomial test; no radius column."""

    name, kind = "predict", "predict"
    row_keys = ("n", "alpha", "batch_size", "skip", "seed")

    def evaluator(self, cc, sigma, apply_fn, num_classes):
        def evaluate(keys, variables, x, y):
            prediction = certification.predict(keys, apply_fn, variables, x, n=cc.n,
                                               **self._common(cc, sigma, num_classes))
            return prediction, jnp.zeros(prediction.shape, jnp.float32), jnp.full_like(prediction, cc.n)
        return evaluate


class AttackedPredict(Predict):
    """PREDICT on an adversarial image (SmoothAdv's ``predict.py``): each image is attacked alone within L2
    ``certify.epsilon`` (pixel units) by ``smoothadv.smooth_pgd_l2`` (``no_grad_attack``) or ``smooth_ddn`` with
    ``num_steps`` steps and ``num_noise_vec`` draws of N(0, sigma^2 I) (none with ``base_attack``: the base
    classifier), from the key ``fold_in(keys[b], noise.ATTACK_STREAM)``, independent of PREDICT's draws; DDN uses the
    reference's evaluation settings (initial norm 1, ``gamma = ddn_gamma_for_prediction(epsilon, T)``). Its accuracy
    is the empirical robust accuracy at radius epsilon (an upper bound)."""

    name, attacked = "predict_attacked", True
    _KEYS = ("attack", "epsilon", "num_steps", "num_noise_vec", "no_grad_attack", "base_attack")

    def validate(self, cc, sigma):
        super().validate(cc, sigma)
        eps = cc.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
            raise ValueError(f"certify.epsilon={eps!r} is not allowed; it must be a finite number >= 0 (pixel L2 "
                             "units)")
        _integer(cc, "num_steps")
        _integer(cc, "num_noise_vec")
        if cc.no_grad_attack and (cc.attack != "pgd" or cc.num_noise_vec < 2 or cc.base_attack):
            raise ValueError("certify.no_grad_attack=True is not allowed here; it needs attack='pgd', "
                             "num_noise_vec >= 2 and base_attack=False")

    def settings(self, cc, sigma):
        return {**super().settings(cc, sigma), **{k: cc[k] for k in self._KEYS}}

    def name_parts(self, cc):
        return (analysis.attack_name(cc.attack, cc.epsilon, cc.num_steps, cc.num_noise_vec, cc.no_grad_attack,
                                     cc.base_attack),)

    def evaluator(self, cc, sigma, apply_fn, num_classes):
        predict = super().evaluator(cc, sigma, apply_fn, num_classes)
        eps, steps, m = float(cc.epsilon), int(cc.num_steps), int(cc.num_noise_vec)
        gamma = smoothadv.ddn_gamma_for_prediction(eps, steps) if eps > 0 else 0.05

        def attack_one(variables, key, x, y):
            noise_key, direction_key = jax.random.split(jax.random.fold_in(key, ATTACK_STREAM))
            noise = None if cc.base_attack else sigma * jax.random.normal(noise_key, (m, 1) + x.shape, x.dtype)
            if cc.attack == "pgd":
                x_adv = smoothadv.smooth_pgd_l2(apply_fn, variables, x[None], y[None], noise, epsilon=eps,
                                                num_steps=steps, no_grad=cc.no_grad_attack, key=direction_key)
            else:
                x_adv = smoothadv.smooth_ddn(apply_fn, variables, x[None], y[None], noise, epsilon=eps,
                                             num_steps=steps, gamma=gamma, init_norm=1.0, key=direction_key)
            return x_adv[0]

        def evaluate(keys, variables, x, y):
            x_adv = jax.vmap(attack_one, in_axes=(None, 0, 0, 0))(variables, keys, x, y)
            return predict(keys, variables, x_adv, y)
        return evaluate


class Sequential(Mode):
    """Sequential certification (``certification.certify_sequential``): stops each image once the radius grid
    ``certify.radii`` is settled; the log adds the forward passes spent (``samples``). Both futility settings are
    always recorded, so a log begun under another stopping rule is never continued under this one."""

    name, kind = "sequential", "sequential"
    row_keys = ("n0", "max_samples", "alpha", "batch_size", "skip", "seed", "cs_method")

    def validate(self, cc, sigma):
        super().validate(cc, sigma)
        _integer(cc, "max_samples")
        if cc.cs_method not in SEQUENTIAL_METHODS:
            raise ValueError(f"certify.cs_method={cc.cs_method!r} is not allowed; choose one of: "
                             f"{', '.join(SEQUENTIAL_METHODS)}")
        resolve_radii(cc.radii, sigma)
        check_futility(cc.futility, cc.futility_level, "certify.")

    def settings(self, cc, sigma):
        out = {k: cc[k] for k in self.row_keys}
        out["radii"] = list(resolve_radii(cc.radii, sigma))
        out.update(futility=cc.futility, futility_level=float(cc.futility_level))
        return {**out, **super().settings(cc, sigma)}

    def describe(self, cc, sigma):
        radii = ", ".join(f"{r:g}" for r in resolve_radii(cc.radii, sigma))
        return [f"sequential: {cc.cs_method} bounds, n0={cc.n0}, at most {cc.max_samples} estimation samples, stops "
                f"when the radius grid [{radii}] is settled"] + super().describe(cc, sigma)

    def draws(self, cc):
        return cc.max_samples

    def evaluator(self, cc, sigma, apply_fn, num_classes):
        radii = resolve_radii(cc.radii, sigma)

        def evaluate(keys, variables, x, y):
            cert = certification.certify_sequential(
                keys, apply_fn, variables, x, radii=radii, n0=cc.n0, max_samples=cc.max_samples, method=cc.cs_method,
                futility=cc.futility, futility_level=float(cc.futility_level), **self._common(cc, sigma, num_classes))
            return cert.prediction, cert.radius, cert.num_samples
        return evaluate


MODES = {mode.name: mode for mode in (Certify(), RandomizedCertify(), Predict(), AttackedPredict(), Sequential())}


def get(cc) -> Mode:
    """The mode ``config.certify`` names: ``mode``, with ``randomized_cp`` (certify) or ``attack`` (predict)."""
    name = cc.mode
    if cc.mode == "certify" and cc.randomized_cp is True:
        name = "certify_randomized"
    elif cc.mode == "predict" and cc.attack != "none":
        name = "predict_attacked"
    return MODES.get(name, MODES["certify"])  # an unknown mode is refused by validate
