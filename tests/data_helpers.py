"""Small generated corpora for the data tests (no third-party text, no installed corpus needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refine_lm.data import PrepareConfig, SourceConfig
from refine_lm.data.prepare import TokenizerSettings
from refine_lm.data.synthetic import SyntheticConfig

WORDS = (
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "I", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she",
    "there", "been", "one", "all", "we", "their", "has", "would", "when", "what", "will", "no", "if", "more", "out",
    "so", "said", "who", "up", "them", "some", "could", "him", "into", "its", "then", "two", "time", "do", "like",
    "other", "than", "now", "only", "my", "over", "also", "new", "any", "these", "way", "our", "first", "may", "most",
    "river", "stone", "garden", "window", "morning", "letter", "candle", "harbour", "village", "market", "winter",
    "silver",
)  # fmt: skip


def sentence(rng: np.random.Generator) -> str:
    words = [WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(5, 14)))]
    return " ".join(words).capitalize() + str(rng.choice([".", ".", "?", "!", ";"]))


def document_text(seed: int, n_paragraphs: int) -> str:
    rng = np.random.default_rng(seed)
    paragraphs = [" ".join(sentence(rng) for _ in range(int(rng.integers(2, 6)))) for _ in range(n_paragraphs)]
    return "\n\n".join(paragraphs) + "\n"


def write_text_corpus(root: Path, n_docs: int = 40, first_seed: int = 0) -> dict[str, str]:
    """``n_docs`` text files of varied length under ``root``; returns {file name: text}."""
    root.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i in range(first_seed, first_seed + n_docs):
        text = document_text(i, n_paragraphs=3 + (i * 7) % 25)
        (root / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
        texts[f"doc{i:03d}.txt"] = text
    return texts


def small_config(text_dir: Path, output: Path, **overrides) -> PrepareConfig:
    """A fast configuration: a 512-token BPE and 512-token synthetic episodes."""
    fields = dict(
        output=str(output),
        sources=[SourceConfig("text", name="toy", path=str(text_dir))],
        validation_fraction=0.15,
        test_fraction=0.15,
        tokenizer=TokenizerSettings(vocab_size=512),
        synthetic=SyntheticConfig(
            train_fraction=0.2, validation_episodes=3, episode_tokens=512, episodes_per_document=2, facts=2, distractors=1
        ),
        report_seq_lens=[512],
    )
    fields.update(overrides)
    return PrepareConfig(**fields)
