"""Stage 2, data: splits and tasks, dataset sources (one file each in ``sources/``), OOD shifts, batch feeds."""
