"""Stage 4, running: the sweep over cells, the run's queue and records in its Optuna storage, one trial."""
