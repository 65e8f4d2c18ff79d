"""Trains a base classifier for randomized smoothing with Gaussian noise augmentation.

  python train.py --config=configs/digits.py --workdir=runs/digits
  python train.py --config=configs/cifar10.py:sigma=0.50 --workdir=runs/cifar10_s050 --config.batch_size=128

Any config field can be overridden with --config.<field>=<value>. Killed and restarted with the same command, a
run resumes from its newest checkpoint in --workdir and ends exactly where an uninterrupted run would.
"""

from absl import app

from smoothjax import jobs

_CONFIG, _WORKDIR = jobs.define_flags("Directory for checkpoints, metrics and logs.")


def main(argv):
    results = jobs.run("train", argv, _CONFIG.value, _WORKDIR.value)
    if "clean_accuracy" in results:
        print(f"final (step {results['step']}): clean accuracy {results['clean_accuracy']:.4f}, noisy accuracy "
              f"(sigma={_CONFIG.value.sigma}) {results['noisy_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=jobs.parse_flags)
