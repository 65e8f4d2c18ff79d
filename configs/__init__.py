"""Experiment configs (ml_collections): ``python train.py --config=configs/<name>.py[:args]``; defaults in common.py."""
