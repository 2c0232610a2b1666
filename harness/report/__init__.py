"""Stage 6, reports: Markdown and HTML; ``figures/`` holds one file per figure."""
