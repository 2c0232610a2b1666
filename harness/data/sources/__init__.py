"""Dataset sources, one file per family; every module here is imported when the ``DATASETS`` registry is first used."""
