"""A run's tables on disk: :func:`write_tables` writes them, :func:`load` reads them back.

Every table is written as CSV, the format anyone can open, and also as Parquet when pyarrow is
installed (``pip install finetune-harness[parquet]``): typed for other tools (DuckDB, Polars,
R's arrow) and small, since tidy rows repeat (a real run's measurements copied to 900k rows:
195 MB of CSV, 0.5 MB of Parquet; pandas read either in under a second here, the CSV a little
faster). Each file is written atomically (a temp file, then ``os.replace``), so a killed run
leaves each file whole, old or new, never half of one.

The Parquet file holds exactly the table the CSV parses to (same dtypes; text columns' empty
strings read as missing, since CSV cannot tell them apart), so :func:`load` returns the same
frames whichever file it reads. A Parquet file records the SHA-256 of the CSV it was made from;
:func:`load` reads it only while that CSV is unchanged (not after a run killed between the two
writes, nor after a hand edit of the CSV), and falls back to the CSV otherwise. A folder whose
CSVs were deleted to save space is read from its Parquet files alone.

>>> run = load("results/gpu_perf/20261128-201700-ab12")   # doctest: +SKIP
>>> run.measurements.query("metric == 'samples_per_s' and phase == 'all'")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness._io import atomic_write_bytes
from harness.errors import UserError

__all__ = ["TABLES", "RunTables", "load", "parquet_available", "write_tables"]

TABLES = ("measurements", "trials", "summary")
_HASH_KEY = b"harness_csv_sha256"  # Parquet schema metadata: the CSV this file was made from


@dataclass(frozen=True)
class RunTables:
    """A run read back: the tidy table, the trials and summary tables, the environment and spec."""

    measurements: pd.DataFrame
    trials: pd.DataFrame
    summary: pd.DataFrame
    env: dict[str, Any]
    spec: dict[str, Any]


def parquet_available() -> bool:
    """Whether pyarrow is installed, so runs are also written (and read) as Parquet."""
    return importlib.util.find_spec("pyarrow") is not None


def write_tables(run_dir: str | Path, measurements: pd.DataFrame, trials: pd.DataFrame,
                 summary: pd.DataFrame) -> list[Path]:
    """Write the three tables into ``run_dir`` (CSV, and Parquet with pyarrow); return the paths.

    >>> write_tables(run_dir, measurements_frame(rows), trials, summarize(m, trials))  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    parquet = parquet_available()
    written = []
    for name, df in zip(TABLES, (measurements, trials, summary), strict=True):
        data = df.to_csv(index=False).encode()
        csv_path = run_dir / f"{name}.csv"
        atomic_write_bytes(csv_path, data)
        written.append(csv_path)
        pq_path = run_dir / f"{name}.parquet"
        if parquet:
            atomic_write_bytes(pq_path, _parquet_bytes(_read_csv(io.BytesIO(data), name), data))
            written.append(pq_path)
        else:  # an older Parquet no longer matches the CSV; load() would skip it, so drop it
            pq_path.unlink(missing_ok=True)
    return written


def load(run_dir: str | Path) -> RunTables:
    """Read the tables a study wrote into ``run_dir``: Parquet where it is current, else CSV.

    >>> run = load("results/finetune_vs_probe/20261128-201700-ab12")   # doctest: +SKIP
    >>> run.measurements.query("metric == 'accuracy' and split == 'test'")   # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if not any((run_dir / f"measurements.{ext}").is_file() for ext in ("csv", "parquet")):
        raise UserError(f"{str(run_dir)!r} is not a run folder: it holds no measurements.csv; "
                        "pass a run folder such as results/finetune_vs_probe/<run_id>.")
    readable = ("csv", "parquet") if parquet_available() else ("csv",)
    missing = [f"{name}.csv" for name in TABLES
               if not any((run_dir / f"{name}.{ext}").is_file() for ext in readable)]
    missing += [f for f in ("env.json", "spec.json") if not (run_dir / f).is_file()]
    if missing:
        raise UserError(f"run folder {str(run_dir)!r} lacks {', '.join(missing)}; was the run "
                        f"stopped before it wrote its tables? `python -m harness study --resume "
                        f"{run_dir}` finishes it.")
    tables = {name: _read_table(run_dir, name) for name in TABLES}
    return RunTables(
        **tables,
        env=json.loads((run_dir / "env.json").read_text()),
        spec=json.loads((run_dir / "spec.json").read_text()),
    )


def _read_csv(source: Any, name: str) -> pd.DataFrame:
    # budgets are labels ("10", "all"), never numbers; epoch is empty for whole-run values
    df = pd.read_csv(source, dtype={"budget": str})
    if name == "measurements":
        df["epoch"] = df["epoch"].astype("Int64")
    return df


def _parquet_bytes(df: pd.DataFrame, csv_data: bytes) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), _HASH_KEY: hashlib.sha256(csv_data).hexdigest().encode()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    return buf.getvalue()


def _read_table(run_dir: Path, name: str) -> pd.DataFrame:
    csv_path, pq_path = run_dir / f"{name}.csv", run_dir / f"{name}.parquet"
    data = csv_path.read_bytes() if csv_path.is_file() else None
    if pq_path.is_file() and parquet_available():
        import pyarrow.parquet as pq

        meta = pq.read_schema(pq_path).metadata or {}
        if data is None or meta.get(_HASH_KEY) == hashlib.sha256(data).hexdigest().encode():
            df = pd.read_parquet(pq_path)
            for col in df.columns[df.dtypes == object]:  # e.g. `pareto`: bools, missing on final rows
                df[col] = df[col].where(df[col].notna(), float("nan"))  # None -> NaN, as from CSV
            return df
    return _read_csv(io.BytesIO(data), name)
