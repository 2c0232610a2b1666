"""Stage 2, models: block-structured backbones, one file per family; the ``MODELS`` registry imports every module here."""
