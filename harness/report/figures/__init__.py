"""The report's figures, one module each; the ``FIGURES`` registry imports every module here."""
