"""Write audit rows to CSV or Parquet (chosen by the file extension).

Both formats carry the columns of :data:`offpolicy.log.COLUMNS` in that order. Times are
unix seconds (float, as in the events), so a row round-trips exactly. In CSV an absent
value is an empty cell and floats are written with ``repr`` (shortest exact form); in
Parquet absent values are nulls and the types are explicit (see :data:`PARQUET_SCHEMA`).
The file is written next to its destination and renamed into place, so a failed export
never leaves a truncated file behind.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from offpolicy.log import COLUMNS, AuditRow

FORMATS: Final = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Rows per progress callback (and per Parquet row group slice).
CHUNK: Final = 10_000

PARQUET_SCHEMA: Final = pa.schema(
    [
        ("row_kind", pa.string()),
        ("decision_id", pa.string()),
        ("decision_ts", pa.float64()),
        ("arm_id", pa.string()),
        ("strategy", pa.string()),
        ("strategy_params", pa.string()),
        ("config_version", pa.int64()),
        ("propensity", pa.float64()),
        ("reward", pa.float64()),
        ("reward_ts", pa.float64()),
        ("source", pa.string()),
        ("reward_event_id", pa.string()),
        ("reward_outcome", pa.string()),
        ("user_context", pa.string()),
    ]
)
assert tuple(PARQUET_SCHEMA.names) == COLUMNS


class ExportError(ValueError):
    """An output path we cannot write (unknown extension, missing directory)."""


def export_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the extension, else :class:`ExportError`."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ExportError(f"{path}: unknown extension; use one of {', '.join(sorted(FORMATS))}")
    if not path.parent.is_dir():
        raise ExportError(f"{path.parent}: no such directory")
    return fmt


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_rows(
    path: Path, rows: Sequence[AuditRow], progress: Callable[[int], None] | None = None
) -> str:
    """Write ``rows`` to ``path`` atomically; returns the format used."""
    fmt = export_format(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(COLUMNS)
                for start in range(0, len(rows), CHUNK):
                    chunk = rows[start : start + CHUNK]
                    writer.writerows([_cell(v) for v in row.as_tuple()] for row in chunk)
                    if progress is not None:
                        progress(len(chunk))
        else:
            with pq.ParquetWriter(tmp, PARQUET_SCHEMA) as writer:
                if not rows:
                    writer.write_table(PARQUET_SCHEMA.empty_table())
                for start in range(0, len(rows), CHUNK):
                    chunk = rows[start : start + CHUNK]
                    columns = list(zip(*(row.as_tuple() for row in chunk), strict=True))
                    table = pa.Table.from_arrays(
                        [
                            pa.array(col, type=PARQUET_SCHEMA.field(i).type)
                            for i, col in enumerate(columns)
                        ],
                        schema=PARQUET_SCHEMA,
                    )
                    writer.write_table(table)
                    if progress is not None:
                        progress(len(chunk))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return fmt
