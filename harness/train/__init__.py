"""Stage 3, training: the strategy contract, phase application, the one loop, evaluation, pretraining."""
