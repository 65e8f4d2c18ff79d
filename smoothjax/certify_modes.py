"""What certify.py's job does beyond Cohen et al.'s CERTIFY / PREDICT: sequential mode, sound noise, randomized
Clopper-Pearson; their settings, log names, evaluation and rows. ``smoothjax.certify_loop`` calls into this module.

* ``mode='sequential'``: ``sequential.certify_sequential`` on the radius grid ``certify.radii`` with
  ``certify.n0``, ``certify.max_samples``, ``certify.cs_method`` (``betting``, ``union`` or ``grid``),
  ``certify.futility`` (``projected`` or ``exact``) and ``certify.futility_level``; both futility settings are always recorded, so a log begun under
  another stopping rule is never continued under this one; the log ``sequential_sigma_<s>.tsv`` has the
  reference certification columns plus ``samples`` (forward passes spent on the image, n0 included).
* ``sound=True`` (any mode): exact grid noise (``smoothjax.sound_noise``), which needs inputs on the 1/255 grid.
  8-bit data already are; other data (the digits are k/16) are **rounded to the grid** (each pixel moves by at most
  1/510) before anything else, and the certificate is then for the rounded image, which the progress output says.
  The log name gets ``_sound`` (``certify_sound_sigma_0.25.tsv``).
* ``randomized_cp=True`` (mode ``certify`` only): ``randomized_certification.certify_randomized``, whose
  certificates depend on an extra uniform draw; the log name gets ``_randomized``, so it is never mixed with
  deterministic rows.

Each option that changes the rows is recorded in the log's settings sidecar; options left at their defaults are
not recorded, so logs written before these options existed are still continued.
"""

from __future__ import annotations

import numpy as np

from smoothjax.certification import sound_noise
from smoothjax.analysis import COLUMNS, format_row, header, parse_radii
from smoothjax.certification.sequential import FUTILITY_LEVEL, FUTILITY_RULES, check_futility, check_radii
from smoothjax.certification.sequential import METHODS as SEQUENTIAL_METHODS

HEADERS = {kind: header(kind) for kind in COLUMNS}
DEFAULT_GRID_STEP = 0.25  # radii='' means 0, 0.25, 0.5, ... up to 3 sigma (pixel units)


def _flag(cc, name: str) -> bool:
    value = cc.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"certify.{name}={value!r} is not allowed; use True or False")
    return value


def resolve_radii(value, sigma: float) -> tuple:
    """The sequential radius grid (pixel units) of ``certify.radii``: '' or None = ``0, 0.25, ...`` up to 3 sigma;
    a string ``'0,0.25,0.5'`` or ``'start:stop:step'`` (stop inclusive); or a sequence of numbers. Raises a one-line
    ValueError unless the grid is non-empty, finite, >= 0 and strictly increasing."""
    try:
        if value is None or (isinstance(value, str) and not value.strip()):
            return check_radii(DEFAULT_GRID_STEP * np.arange(int(np.floor(3 * sigma / DEFAULT_GRID_STEP + 1e-9)) + 1))
        return check_radii(parse_radii(value) if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"certify.radii={value!r} is not allowed; use '' (0, 0.25, ... up to 3 sigma), "
                         "'0,0.25,0.5' or 'start:stop:step' with increasing radii >= 0") from None


def validate(cc, sigma: float) -> None:
    """One-line ValueError naming the first bad sequential / sound / randomized setting of ``config.certify``."""
    sound, randomized = _flag(cc, "sound"), _flag(cc, "randomized_cp")
    if randomized and cc.mode != "certify":
        raise ValueError(f"certify.randomized_cp=True is not allowed with mode={cc.mode!r}; it applies to "
                         "mode='certify' only")
    if sound and cc.get("attack", "none") != "none":
        raise ValueError(f"certify.sound=True is not allowed with attack={cc.attack!r}: an attacked image is off "
                         "the 1/255 grid; use attack='none'")
    if cc.mode == "sequential":
        max_samples = cc.get("max_samples", 100_000)
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"certify.max_samples={max_samples!r} is not allowed; it must be an integer >= 1")
        method = cc.get("cs_method", "betting")
        if method not in SEQUENTIAL_METHODS:
            raise ValueError(f"certify.cs_method={method!r} is not allowed; choose one of: "
                             f"{', '.join(SEQUENTIAL_METHODS)}")
        resolve_radii(cc.get("radii", ""), sigma)
        check_futility(cc.get("futility", FUTILITY_RULES[0]), cc.get("futility_level", FUTILITY_LEVEL), "certify.")


def _futility(cc) -> dict:
    return {"futility": cc.get("futility", FUTILITY_RULES[0]),
            "futility_level": float(cc.get("futility_level", FUTILITY_LEVEL))}


def log_variants(cc) -> tuple:
    """Name parts after the mode: ``('sound',)``, ``('randomized',)``, both (in that order) or none."""
    return tuple(name for name, on in (("sound", cc.get("sound", False)),
                                       ("randomized", cc.get("randomized_cp", False))) if on)


def settings(cc, sigma: float) -> dict:
    """The row-changing settings of the options of this module (sequential keys, and sound / randomized when on)."""
    out = {}
    if cc.mode == "sequential":
        out = {k: cc[k] for k in ("n0", "max_samples", "alpha", "batch_size", "skip", "seed", "cs_method")}
        out["radii"] = list(resolve_radii(cc.get("radii", ""), sigma))
        out.update(_futility(cc))
    if cc.get("sound", False):
        out["sound"] = "exact 1/255 grid noise; inputs rounded to the 1/255 grid"
    if cc.get("randomized_cp", False):
        out["randomized_cp"] = True
    return out


def evaluator(cc, sigma: float, apply_fn, num_classes: int):
    """``f(keys (B,), variables, x (B, H, W, C)) -> (prediction, radius, samples)`` for sequential mode or a
    randomized-CP certify run, else None (the loop's own CERTIFY / PREDICT). Sound noise when ``cc.sound``."""
    common = dict(sigma=sigma, alpha=cc.alpha, batch_size=cc.batch_size, num_classes=num_classes,
                  sound=bool(cc.get("sound", False)))
    if cc.mode == "sequential":
        from smoothjax.certification import certify_sequential
        radii = resolve_radii(cc.get("radii", ""), sigma)

        def run(keys, variables, x):
            cert = certify_sequential(keys, apply_fn, variables, x, radii=radii, n0=cc.n0, max_samples=cc.max_samples,
                                      method=cc.cs_method, **_futility(cc), **common)
            return cert.prediction, cert.radius, cert.num_samples
        return run
    if cc.get("randomized_cp", False):
        from smoothjax.certification import certify_randomized

        def run(keys, variables, x):
            cert = certify_randomized(keys, apply_fn, variables, x, n0=cc.n0, n=cc.n, **common)
            return cert.prediction, cert.radius, cert.prediction * 0 + (cc.n0 + cc.n)
        return run
    return None


def describe(cc, sigma: float) -> list:
    """Progress lines stating the settings of this module's options that are on (none for plain runs)."""
    lines = []
    if cc.mode == "sequential":
        radii = ", ".join(f"{r:g}" for r in resolve_radii(cc.get("radii", ""), sigma))
        lines.append(f"sequential: {cc.cs_method} bounds, n0={cc.n0}, at most {cc.max_samples} "
                     f"estimation samples, stops when the radius grid [{radii}] is settled")
    if cc.get("sound", False):
        lines.append("sound: exact 1/255 grid noise (smoothjax.sound_noise); inputs are rounded to the 1/255 grid")
    if cc.get("randomized_cp", False):
        lines.append("randomized Clopper-Pearson: each certificate also depends on one uniform draw (reported "
                     "separately from deterministic certificates)")
    return lines


def prepare_images(images, sound: bool):
    """float32 images; with ``sound`` rounded to the 1/255 grid. Returns (images, how far the rounding moved a pixel
    at most: 0.0 for 8-bit data, at most 1/510)."""
    images = np.asarray(images, np.float32)
    if not sound:
        return images, 0.0
    levels = sound_noise.LEVELS
    rounded = (np.round(images.astype(np.float64) * levels) / levels).astype(np.float32)  # = float32(k / 255)
    return rounded, float(np.max(np.abs(rounded.astype(np.float64) - images), initial=0.0))


__all__ = ['format_row']
