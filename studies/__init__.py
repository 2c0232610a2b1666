"""Named studies, one module each, registered with ``STUDIES.register``; discovered on first use."""
