"""Stage 2, measurement: clocks, memory, FLOPs and the environment."""
