"""`slserve features load TABLE FILE`: a Parquet or CSV file (read by pyarrow) becomes a feature table.

One column holds the entity keys (`--key`, default the first); every other column is a feature, in file order,
and must be numeric with no missing values (a feature vector has no holes to guess).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slserve.errors import InvalidInput
from slserve.features.store import SQLiteFeatureStore


@dataclass(frozen=True)
class Loaded:
    table: str
    rows: int
    columns: list[str]


def read_file(path: Path, key: str | None) -> tuple[list[str], np.ndarray, list[str]]:
    """(keys, float32 vectors, feature column names) of a .parquet or .csv file."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        from pyarrow import csv, parquet
    except ImportError:
        raise InvalidInput("reading feature files needs pyarrow: pip install 'slserve[features]'") from None

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = parquet.read_table(path)
    elif suffix == ".csv":
        # Keys stay text whatever they look like ("007" is not 7).
        first = key or csv.read_csv(path, read_options=csv.ReadOptions(block_size=1 << 16)).column_names[0]
        table = csv.read_csv(path, convert_options=csv.ConvertOptions(column_types={first: pa.string()}))
    else:
        raise InvalidInput(f"{path}: a feature file is .parquet or .csv, not {suffix or 'without a suffix'}")
    names = table.column_names
    key = key or names[0]
    if key not in names:
        raise InvalidInput(f"{path}: no key column {key!r}; its columns are {names}")
    features = [n for n in names if n != key]
    if not features:
        raise InvalidInput(f"{path}: no feature columns besides the key column {key!r}")
    keys_col = table.column(key)
    if keys_col.null_count:
        raise InvalidInput(f"{path}: {keys_col.null_count} row(s) have no key in column {key!r}")
    keys = [str(k) for k in pc.cast(keys_col, pa.string()).to_pylist()]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dupes = sorted({k for k in keys if k in seen or seen.add(k)})  # type: ignore[func-returns-value]
        raise InvalidInput(f"{path}: keys appear more than once: {dupes[:5]}")
    columns = []
    for name in features:
        col = table.column(name)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            raise InvalidInput(f"{path}: column {name!r} is {col.type}; feature columns are numbers")
        if col.null_count:
            raise InvalidInput(f"{path}: column {name!r} has {col.null_count} missing value(s); fill them first")
        columns.append(col.to_numpy().astype(np.float32))
    return keys, np.stack(columns, axis=1), features


def load_table(store: SQLiteFeatureStore, table: str, path: Path, key: str | None = None) -> Loaded:
    keys, vectors, columns = read_file(path, key)
    store.replace(table, keys, vectors, columns, str(path))
    return Loaded(table, len(keys), columns)
