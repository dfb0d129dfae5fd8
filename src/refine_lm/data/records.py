"""Reading evaluation data files (JSONL, JSON, parquet, plain text) with errors that name the file and column."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError

TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` (one object per line), ``.json`` (a list of objects) or ``.parquet`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise ConfigError(f"{path}: not a readable parquet file ({e})") from None
    elif path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{number}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e.msg.removesuffix(' at')}: line {e.lineno})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ConfigError(f"{path}: expected a JSON list of objects")
    else:
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r} (expected one of {', '.join(TABLE_SUFFIXES)})")
    if not rows:
        raise ConfigError(f"{path}: the file has no rows")
    return rows


def require_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: str | Path) -> None:
    """Raise a ConfigError naming the file, the row and the first missing column."""
    for index, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ConfigError(
                f"{path}: row {index + 1} has no column {missing[0]!r} (needed: {', '.join(columns)}; found: {', '.join(row)})"
            )


def string_list(value: Any, path: str | Path, index: int, column: str) -> list[str]:
    """A column holding a list of reference strings (a lone string is one reference; never split on '|')."""
    values = [value] if isinstance(value, str) else value
    if isinstance(values, (list, tuple)) and values and all(isinstance(v, str) and v.strip() for v in values):
        return list(values)
    # an empty reference would be found in every answer
    raise ConfigError(
        f"{path}: row {index + 1}, column {column!r}: expected a non-empty list of non-empty strings, got {value!r}"
    )


def read_texts(path: str | Path) -> list[str]:
    """Documents from a file: a ``.txt`` file is one document; JSONL/JSON/parquet rows give their ``text`` column.

    A directory gives the documents of every such file in it, in name order.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", *TABLE_SUFFIXES))
        if not files:
            raise ConfigError(f"{path}: no .txt, .jsonl, .json or .parquet files in the directory")
        return [text for f in files for text in read_texts(f)]
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ConfigError(f"{path}: the file is empty")
        return [text]
    rows = read_records(path)
    require_columns(rows, ["text"], path)
    texts = [row["text"] for row in rows]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ConfigError(f"{path}: row {bad + 1}, column 'text': expected a string")
    return texts


def write_records(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as ``.jsonl`` or ``.parquet`` (by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ConfigError(f"{path}: can write .jsonl or .parquet, not {path.suffix!r}")
    return path
