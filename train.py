"""Trains a base classifier for randomized smoothing with Gaussian noise augmentation.

  python train.py --config=configs/digits.py --workdir=runs/digits
  python train.py --config=configs/cifar10.py:sigma=0.50 --workdir=runs/cifar10_s050 --config.batch_size=128

Any config field can be overridden with --config.<field>=<value>. Killed and restarted with the same command, a
run resumes from its newest checkpoint in --workdir and ends exactly where an uninterrupted run would.
"""

from smoothjax.jobs import console  # imports no JAX before the flags are parsed

if __name__ == "__main__":
    console.train()
