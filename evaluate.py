"""Evaluates the smoothed classifier of a trained stochastic (SIAM) model under attack, over a noise x m_test grid.

  python evaluate.py --config=configs/siam_cifar10.py:noise=cpni --workdir=runs/siam_c10_cpni \\
      --config.evaluate.noise_sd=0.0,0.0625 --config.evaluate.m_test=1,8,64 \\
      --config.evaluate.attacks=clean,pgd,epgd,transfer,nattack --config.evaluate.source_workdir=runs/siam_c10_pni

Settings live in ``config.evaluate`` (noise_sd, m_test, mode, attacks, epsilon, pgd_steps, eot_passes,
source_workdir, nattack_population, nattack_iterations, split, max_images, batch_size, chunk_size, pass_loop, seed,
out); the images are the first ``max_images`` of ``config.dataset``'s ``split``. Writes results.json, results.tsv,
results.md, accuracy.png and metrics.jsonl to ``out`` (default ``<workdir>/robustness``); see
smoothjax/jobs/evaluate.py. Multi-host: ``--config.distributed.*`` on every process, as for train.py and certify.py.
"""

import os

from absl import app

from smoothjax import jobs

_CONFIG, _WORKDIR = jobs.define_flags("Training run directory to evaluate.")


def main(argv):
    rows = jobs.run("evaluate", argv, _CONFIG.value, _WORKDIR.value)
    import jax

    if jax.process_index() == 0:
        print(f"{len(rows)} settings of {rows[0]['count']} images each; accuracies in "
              f"{_CONFIG.value.evaluate.out or os.path.join(_WORKDIR.value, 'robustness')}")


if __name__ == "__main__":
    app.run(main, flags_parser=jobs.parse_flags)
