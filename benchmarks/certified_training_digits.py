"""Consistency and MACER against Gaussian augmentation on digits: issue 19's acceptance, run as its commands.

    python benchmarks/certified_training_digits.py                      # gaussian, consistency, macer at sigma 0.5
    python benchmarks/certified_training_digits.py --losses=macer --runs=runs/ct_digits

For each loss: ``train.py --config=configs/digits.py --config.sigma=0.5 --config.loss=<loss>`` (the default digits
schedule and seed: 660 steps of batch 64; each loss's default options, smoothjax/jobs/defaults.py) and then
``certify.py`` on every 2nd test image (180 of 360) with n = 2,000 (n0 = 100, alpha = 0.001). Prints and writes
(``results/certified_training_digits.json``) each run's average certified radius (ACR), certified accuracy on the
radius grid, training seconds and the final clean / noisy accuracy, and whether every method's ACR is above
Gaussian augmentation's. Both scripts resume, so a killed run continues where it stopped; compilation included.
"""

import json
import subprocess
import sys
import time

from absl import app, flags

import timing
from smoothjax import analysis

_LOSSES = flags.DEFINE_list("losses", ["gaussian", "consistency", "macer"], "config.loss values; gaussian first")
_SIGMA = flags.DEFINE_float("sigma", 0.5, "training and certification noise level")
_RUNS = flags.DEFINE_string("runs", str(timing.ROOT / "runs" / "certified_training_digits"), "workdirs go here")
_OUT = flags.DEFINE_string("out", str(timing.HERE / "results" / "certified_training_digits.json"), "JSON results")
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def run(script: str, workdir, loss: str, *extra) -> float:
    """Runs ``script`` (train.py / certify.py) on the digits config with ``loss``; returns its wall seconds."""
    cmd = [sys.executable, script, "--config=configs/digits.py", f"--workdir={workdir}",
           f"--config.sigma={_SIGMA.value}", f"--config.loss={loss}", *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=timing.ROOT)
    return time.time() - start


def main(argv):
    del argv
    rows = {}
    for loss in _LOSSES.value:
        workdir = f"{_RUNS.value}/{loss}"
        train_s = run("train.py", workdir, loss)
        certify_s = run("certify.py", workdir, loss, "--config.certify.n=2000", "--config.certify.skip=2")
        log = analysis.read_log(f"{workdir}/certify/certify_sigma_{analysis.format_sigma(_SIGMA.value)}.tsv")
        final = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")][-1]
        rows[loss] = {"acr": round(analysis.average_certified_radius(log), 4), "images": len(log.idx),
                      "certified_accuracy": dict(zip(map(str, RADII), map(float, analysis.certified_accuracy(log,
                                                                                                          RADII)))),
                      "train_seconds": round(train_s, 1), "certify_seconds": round(certify_s, 1),
                      "clean_accuracy": final.get("eval_clean_accuracy"),
                      "noisy_accuracy": final.get("eval_noisy_accuracy")}
        r = rows[loss]
        print(f"{loss}: ACR {r['acr']:.3f} on {r['images']} images; certified accuracy at r = "
              f"{' / '.join(map(str, RADII))}: {' / '.join(f'{v:.3f}' for v in r['certified_accuracy'].values())}; "
              f"clean {r['clean_accuracy']}, noisy {r['noisy_accuracy']}; train {train_s:.0f} s", flush=True)
    above = {k: rows[k]["acr"] > rows["gaussian"]["acr"] for k in rows if k != "gaussian"} if "gaussian" in rows else {}
    print("ACR above Gaussian augmentation's:", above or "(no gaussian run)")
    timing.write_results({"benchmark": "certified_training_digits", "sigma": _SIGMA.value, "n": 2000, "skip": 2,
                          "machine": timing.machine_info(), "rows": rows, "above_gaussian": above}, _OUT.value)


if __name__ == "__main__":
    app.run(main)
