"""Stage 5, analysis: tidy tables, ``load()``, claims and ``compare``; reads only tables."""
