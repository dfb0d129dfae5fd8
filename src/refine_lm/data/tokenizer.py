"""Byte-level BPE tokenizers as Hugging Face directories: train one, save it, load yours, copy it next to a checkpoint.

The trained tokenizer is GPT-2 style: text is split with the GPT-2 pre-tokenizer regex, mapped to
bytes, and merged with BPE; no normaliser, no prefix space, so ``decode(encode(text)) == text``
for any Unicode text. Two special tokens: ``<|endoftext|>`` (id 0; end of document, also used as
BOS and EOS) and ``<|pad|>`` (id 1). ``encode`` adds no special tokens.

A directory written by ``save_tokenizer`` holds ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json`` and loads with ``transformers.AutoTokenizer.from_pretrained(dir)``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..config import ConfigError

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MIN_VOCAB = 256 + 2  # the byte alphabet plus the two special tokens
# files a tokenizer directory may hold (copied next to checkpoints); weights and model configs are never among them
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
)  # fmt: skip


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` (an iterable, consumed once); returns a ``PreTrainedTokenizerFast``.

    Deterministic: the same texts in the same order give the same tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise ConfigError(f"tokenizer vocab_size {vocab_size} is below {MIN_VOCAB} (256 bytes + 2 special tokens)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOD_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOD_TOKEN,
        eos_token=EOD_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # would turn "a ." into "a." and break the round trip
        model_max_length=1 << 30,  # a recurrent model has no context limit; avoids length warnings
    )


def save_tokenizer(tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer`` as a Hugging Face directory (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the name transformers 4.x knows too (5.x: an alias)
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {
        name: getattr(tokenizer, name)
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if getattr(tokenizer, name, None) is not None
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
    return directory


def tokenizer_dir(path: str | Path) -> Path:
    """The tokenizer directory of ``path``: the path itself, or ``path/tokenizer`` for a prepared corpus."""
    path = Path(path)
    if (path / "manifest.json").is_file() and (path / "tokenizer").is_dir():
        path = path / "tokenizer"
    if not path.is_dir():
        raise ConfigError(f"tokenizer {path}: not a directory (expected a Hugging Face tokenizer directory)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ConfigError(f"tokenizer {path}: no tokenizer.json or tokenizer_config.json in it")
    return path


def load_tokenizer(path: str | Path):
    """Load a local Hugging Face tokenizer directory (ours or yours), or the tokenizer of a prepared corpus."""
    from transformers import AutoTokenizer

    path = tokenizer_dir(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # a malformed tokenizer.json surfaces as whatever its parser raises
        raise ConfigError(f"tokenizer {path}: cannot be loaded with AutoTokenizer ({type(e).__name__}: {e})") from None


def check_vocabulary(tokenizer, vocab_size: int, model: str | Path) -> None:
    """Refuse a tokenizer with ids the model has no embedding for."""
    if len(tokenizer) > vocab_size:
        raise ConfigError(f"{model}: the tokenizer has {len(tokenizer)} tokens, more than the model's vocab_size {vocab_size}")


def copy_tokenizer(source: str | Path, checkpoint_dir: str | Path) -> Path:
    """Copy the tokenizer files of ``source`` (a tokenizer directory or a prepared corpus) into ``checkpoint_dir``."""
    source = tokenizer_dir(source)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, checkpoint_dir / name)
    return checkpoint_dir


def end_of_document_id(tokenizer) -> int:
    """The id that ends a document: EOS, else BOS (a tokenizer with neither cannot be used)."""
    for name in ("eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ConfigError("the tokenizer has neither an EOS nor a BOS token; one is needed as end-of-document marker")


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (a fast tokenizer encodes the batch in parallel)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast (tokenizers >= 0.21) skips offsets
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def vocab_size(tokenizer) -> int:
    """Number of ids the tokenizer can produce (base vocabulary plus added tokens)."""
    return len(tokenizer)
