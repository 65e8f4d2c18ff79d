"""Certifies (or predicts with) the Gaussian-smoothed classifier of a trained run, Cohen et al. (2019) style.

  python certify.py --config=configs/digits.py --workdir=runs/digits
  python certify.py --config=configs/cifar10.py:sigma=0.25 --workdir=runs/cifar10_s025 \\
      --config.certify.skip=20 --config.certify.n=100000 --config.certify.batch_size=400

Settings live in ``config.certify`` (sigma, n0, n, alpha, batch_size, skip, max, split, mode, seed,
images_per_step, tag); sigma defaults to the training sigma. Rows go to ``<workdir>/certify/<mode>_sigma_<sigma>.tsv``
(``<mode>_<tag>_sigma_<sigma>.tsv`` with ``certify.tag``, e.g. ``n100k`` beside an n = 10,000 log) in the reference
format as they finish; a killed run restarted with the same command continues where it stopped. The settings
sidecar records the data by a fingerprint of the images (``smoothjax.data.fingerprint``), not by their path, so a
committed log is continued from any checkout.
At the end the certified-accuracy table (or prediction accuracy) of the whole log is printed.

Sequential certification (anytime-valid; stops once the radius grid is settled, logs ``samples`` per image):

  python certify.py --config=configs/digits.py --workdir=runs/digits --config.certify.mode=sequential \
      --config.certify.radii=0,0.25,0.5,0.75 --config.certify.max_samples=100000 --config.certify.cs_method=betting

``--config.certify.sound=True`` (certify, predict, sequential) uses exact 1/255-grid noise: inputs not on that grid
(the digits are k/16) are rounded to it first, and the certificate is for the rounded image.
``--config.certify.randomized_cp=True`` (certify) uses the randomized Clopper-Pearson bound. Both write separately
named logs (``certify_sound_sigma_0.25.tsv``, ``certify_randomized_sigma_0.25.tsv``); the modes are in
smoothjax/jobs/certify_modes.py.

Empirical robustness (SmoothAdv's ``predict.py``): in predict mode, ``certify.attack=pgd|ddn`` attacks each image
within L2 ``certify.epsilon`` (pixel units) with ``num_steps`` (default 20) steps and ``num_noise_vec`` noise draws
(``no_grad_attack``, ``base_attack``: attack the base classifier without noise), then runs PREDICT on the result;
the log is ``predict_pgd_eps_0.5_steps_20_m_8_sigma_0.25.tsv`` and its accuracy is the empirical robust accuracy at
radius epsilon (``python -m smoothjax.analysis CERTIFY_LOG ATTACK_LOGS`` tabulates several):

  python certify.py --config=configs/cifar10_smoothadv.py:sigma=0.25 --workdir=runs/c10 --config.certify.mode=predict \
      --config.certify.n=1000 --config.certify.attack=pgd --config.certify.epsilon=0.5 --config.certify.num_noise_vec=8

Multi-host (every mode and option): start the same command on each of N processes with
``--config.distributed.coordinator_address=HOST:PORT --config.distributed.num_processes=N
--config.distributed.process_id=I``, or with ``SMOOTHJAX_DISTRIBUTED=1`` where ``jax.distributed.initialize()`` finds
the cluster (TPU pods, SLURM). Each step's images are split over the processes and their devices (every process reads
the checkpoint and its images); process 0 alone writes the log (the same rows as one process's) and prints the table;
a check that fails on any process stops all of them with the same error. Restart all N processes to resume. E.g.:

  for i in 0 1; do python certify.py --config=configs/digits.py --workdir=runs/digits \
      --config.distributed.coordinator_address=127.0.0.1:12345 --config.distributed.num_processes=2 \
      --config.distributed.process_id=$i & done; wait
"""

from absl import app

from smoothjax import analysis, jobs  # neither imports JAX: it reads XLA_FLAGS once the flags are parsed

_CONFIG, _WORKDIR = jobs.define_flags("Training run directory to certify.")


def main(argv):
    path = jobs.run("certify", argv, _CONFIG.value, _WORKDIR.value)
    import jax

    if jax.process_index() != 0:  # process 0 wrote the log and reports it
        return
    with jobs.one_line_errors("certify"):
        _report(path)


def _report(path):
    """Prints the certified-accuracy table (or prediction accuracy) of the whole log at ``path``."""
    log, settings = analysis.read_log(path), analysis.read_settings(path)  # what was run: the sidecar, not the name
    if log.is_certification:
        label = f"&sigma; = {analysis.format_sigma(settings['sigma'])}"
        print(analysis.markdown_table([log], [label], analysis.default_radii([log]), acr=True))
        print(f"{len(log)} images; certified accuracy at radius 0: {analysis.certified_accuracy(log, [0.0])[0]:.3f}, "
              f"average certified radius (ACR): {analysis.average_certified_radius(log):.3f}")
        if (samples := analysis.samples_summary(log)) is not None:  # sequential mode
            print(analysis.format_samples_summary(samples))
    else:
        summary = analysis.prediction_summary(log)
        print(f"{summary.n} images; accuracy {summary.accuracy:.3f}, abstention rate {summary.abstention_rate:.3f}")
        if settings.get("attack", "none") != "none":
            print(f"empirical robust accuracy at radius {settings['epsilon']} ({settings['attack']}): "
                  f"{summary.accuracy:.3f}")


if __name__ == "__main__":
    app.run(main, flags_parser=jobs.parse_flags)
