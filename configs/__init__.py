"""Experiment configs (ml_collections): ``python train.py --config=configs/<name>.py[:args]``.

Defaults live in the package (smoothjax/jobs/defaults.py), so each file loads by path from any directory."""
