"""Optuna studies over the fold runner's training settings: space, storage, objective, study."""
