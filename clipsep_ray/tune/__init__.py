"""Hyperparameter sweeps: Ray Tune runs the training driver per trial, Optuna keeps the study.

``sweep`` (the sweep file, validated), ``study`` (RDB storage, recovery after a dead driver),
``driver`` (the Tuner; imports Ray), ``report`` (tables, best config, pictures, HTML).
"""
