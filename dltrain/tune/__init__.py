"""Hyperparameter search: the `tune:` section (space.py) and Optuna studies of dltrain runs (study.py)."""
