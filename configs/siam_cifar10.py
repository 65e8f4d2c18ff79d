"""SIAM (Nemcovsky et al., "Smoothed Inference for Adversarially-Trained Models") on CIFAR-10: ResNet-20 with PNI or
CPNI weight noise and input noise, L-inf PGD / EPGD adversarial training, smoothed inference.

  python train.py --config=configs/siam_cifar10.py:noise=cpni --workdir=runs/siam_c10_cpni
  python evaluate.py --config=configs/siam_cifar10.py:noise=cpni --workdir=runs/siam_c10_cpni \
      --config.evaluate.source_workdir=runs/siam_c10_cpni_seed1 --config.evaluate.noise_sd=0.0,0.0625 \
      --config.evaluate.m_test=1,8,64,512 --config.evaluate.attacks=clean,pgd,epgd,transfer,nattack \
      --config.evaluate.out=runs/siam_c10_cpni/eval

Argument after ':' — ``noise=pni|cpni`` (default cpni), optionally ``,attack=epgd`` (m_train = 8 EOT passes per
PGD step) and ``,width=4``. Reference command (PyTorch, ``train.py`` of yanemcovsky/SIAM):
``python train.py --net resnet20 --en_cpni --weight_noise --adv --eps 8 --noise_sd 0.25 --m_train 8 --m_test 8
--epochs 400 --batch 256 --nesterov --decay 1e-4 --schedule 200 300 --gamma 0.1 --clip 0.05``
(flag spellings vary between the reference's versions; the recipe is what matters).

Recipe (the issue / paper): SGD Nesterov 0.9, weight decay 1e-4, lr 0.1 divided by 10 at epochs 200 and 300, 400
epochs, batch 256, gradient-norm clipping 0.05, loss 0.5 CE(adversarial) + 0.5 CE(clean), PGD-7 of step eps/4 with
eps = 8/255; best checkpoint by smoothed clean accuracy (``workdir/best``).

Units. epsilon is in pixel units in both codes (the reference divides it by the normalisation std before
stepping in normalised space). The reference's input noise ``noise_sd`` is added to *normalised* images; here the
noise is added to [0, 1] pixels, so the reference's s becomes ``s * std_c`` per channel with the reference's
normalisation std (0.247, 0.243, 0.262) (``cifar_data.py``, used for CIFAR-10 and CIFAR-100 alike): ``noise_sd``
below is that per-channel tuple. The model's own first layer normalises with smoothjax's dataset statistics;
that only rescales the stem's input and changes no pixel-unit quantity.

Expected (paper, CIFAR-10, ResNet-20, eps = 8/255): white-box PGD accuracy of the smoothed CPNI model about 60.4 %
(best previous PNI-style defence 48.7 %), clean accuracy about 80-84 %; smoothing (m_test > 1) beats a single
pass by several points. Numbers are the paper's, not reproduced here (CPU only).
"""

from smoothjax.jobs.defaults import NOISE_SD_REF, REFERENCE_STD, siam_config

__all__ = ["NOISE_SD_REF", "REFERENCE_STD", "get_config", "siam_config"]


def get_config(arg: str = "noise=cpni"):
    return siam_config("cifar10", arg).lock()
