"""Tables as plain text: the Markdown table of reports, the CLI and ``compare``."""

from __future__ import annotations

import pandas as pd


def cell_text(v) -> str:
    """A table cell as text: empty for missing values, whole floats without ".0"."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[cell_text(v) for v in row]
                                               for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |"
             for r in cells]
    lines.insert(1, "|" + "---|" * len(df.columns))
    return "\n".join(lines)


def _text_col(col: pd.Series) -> pd.Series:
    """A text column read back from CSV, where an empty string came back as NaN (float)."""
    return col.astype(object).where(col.notna(), "").astype(str)
