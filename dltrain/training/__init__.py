"""Training runs: the loop, early stopping, checkpoints, the run directory, reporting and plots."""
