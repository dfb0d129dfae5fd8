"""``data prepare``: deterministic disjoint splits, exact token files, synthetic recall episodes, re-runs, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refine_lm.cli import main
from refine_lm.config import ConfigError
from refine_lm.data import PreparedCorpus, SourceConfig, assign_split, prepare_corpus, save_tokenizer, train_tokenizer
from refine_lm.data import prepare as prepare_module
from refine_lm.data.prepare import TokenizerSettings
from refine_lm.data.synthetic import FACT_TEMPLATES, QUESTION_TEMPLATES, RecallEpisodeGenerator, SyntheticConfig

from .data_helpers import document_text, small_config, write_text_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    texts = write_text_corpus(root / "text", n_docs=40)
    out = prepare_corpus(small_config(root / "text", root / "out"))
    return root, texts, PreparedCorpus(out)


def split_ids(corpus: PreparedCorpus, source: str = "toy") -> dict[str, set[str]]:
    return {s: {r["id"] for r in corpus.records(s) if r["source"] == source} for s in ("train", "validation", "test")}


def test_splits_are_disjoint_complete_and_follow_the_hash_rule(built):
    _, texts, corpus = built
    ids = split_ids(corpus)
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"]) and not (ids["validation"] & ids["test"])
    assert set().union(*ids.values()) == {f"toy/{name}" for name in texts}
    for split, members in ids.items():
        assert all(assign_split(doc_id, 0, 0.15, 0.15) == split for doc_id in members)
    assert all(len(members) > 0 for members in ids.values())


def test_split_is_stable_when_documents_are_added_and_depends_on_the_seed():
    ids = [f"src/doc{i}" for i in range(2000)]
    splits = [assign_split(i, 0, 0.1, 0.1) for i in ids]
    assert splits == [assign_split(i, 0, 0.1, 0.1) for i in ids]
    shares = {s: splits.count(s) / len(ids) for s in ("train", "validation", "test")}
    assert abs(shares["validation"] - 0.1) < 0.025 and abs(shares["test"] - 0.1) < 0.025
    assert splits != [assign_split(i, 1, 0.1, 0.1) for i in ids]


def test_adding_documents_keeps_every_old_document_in_its_split(built, tmp_path):
    root, texts, corpus = built
    more = tmp_path / "text"
    more.mkdir()
    for name in texts:
        (more / name).write_text((root / "text" / name).read_text())
    write_text_corpus(more, n_docs=10, first_seed=100)
    bigger = PreparedCorpus(prepare_corpus(small_config(more, tmp_path / "out")))
    old, new = split_ids(corpus), split_ids(bigger)
    for split in old:
        assert old[split] <= new[split]


def test_token_files_hold_each_document_exactly(built):
    _, texts, corpus = built
    tokenizer = corpus.tokenizer()
    manifest = corpus.manifest
    for split in ("train", "validation", "test"):
        index = corpus.index(split)
        assert corpus.tokens(split).dtype == np.uint16
        assert len(corpus.tokens(split)) == manifest["splits"][split]["tokens"] == index[:, 1].sum()
        assert (index[1:, 0] == np.cumsum(index[:, 1])[:-1]).all()  # back to back, in order
        for doc in corpus.documents(split, sources=["toy"]):
            assert tokenizer.decode(doc.tokens.tolist()) == texts[doc.doc_id.removeprefix("toy/")]
    by_source = manifest["splits"]["train"]["by_source"]
    assert by_source["toy"]["tokens"] + by_source["synthetic"]["tokens"] == manifest["splits"]["train"]["tokens"]


def test_synthetic_episodes_state_facts_early_and_ask_them_later(built):
    _, _, corpus = built
    tokenizer = corpus.tokenizer()
    syn = corpus.manifest["synthetic"]
    assert (
        syn["train_episodes"] > 0
        and abs(syn["train_token_share"] - 0.2) < 512 / corpus.manifest["splits"]["train"]["tokens"] + 1e-9
    )
    for split, episodes in (("train", syn["train_episodes"]), ("validation", 3)):
        docs = list(corpus.documents(split, sources=["synthetic"]))
        assert sum(len(d.tokens) for d in docs) == episodes * 512
        for doc in docs:
            assert len(doc.answers) == 3 * len(doc.tokens) // 512  # facts=2: 1 asked mid-episode, both asked at the end
            for start, end in doc.answers:
                answer = tokenizer.decode(doc.tokens[start:end].tolist())
                before = tokenizer.decode(doc.tokens[(start // 512) * 512 : start].tolist())
                stems = [t.split("{")[0].strip() for t in FACT_TEMPLATES]
                stated = [p for p in before.split("\n\n") if answer.strip() in p and any(p.startswith(stem) for stem in stems)]
                assert answer.startswith(" ") and stated  # a statement earlier in the same episode gave the value


def test_token_ids_fit_their_storage_type():
    assert prepare_module.token_dtype(65536) == np.uint16 and prepare_module.token_dtype(65537) == np.uint32


def test_templates_differ_from_the_evaluation_needles():
    for template in FACT_TEMPLATES + QUESTION_TEMPLATES:
        assert "special magic" not in template.lower() and "mentioned in the provided text" not in template.lower()
        assert "hidden" not in template.lower() and "paired with" not in template.lower()  # the held-out NIAH wording


def test_episodes_are_exact_and_reproducible():
    tokenizer = train_tokenizer((document_text(i, 6) for i in range(20)), 600)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    cfg = SyntheticConfig(episode_tokens=800, facts=2, distractors=2)
    generator = RecallEpisodeGenerator(cfg, encode, [document_text(i, 3) for i in range(5)])
    a, b = generator.document((7, 0, 1), 3), generator.document((7, 0, 1), 3)
    assert len(a.tokens) == 2400 and (a.tokens == b.tokens).all() and a.answers == b.answers
    assert all(s // 800 == (e - 1) // 800 for s, e in a.answers)  # answers never straddle an episode boundary
    with pytest.raises(ConfigError, match="episode_tokens=64 is too small"):
        RecallEpisodeGenerator(SyntheticConfig(episode_tokens=64), encode, ["filler"]).episode(np.random.default_rng(0))


def test_prepare_is_deterministic_and_independent_of_batching(built, tmp_path, monkeypatch):
    root, _, corpus = built
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 1000)  # many small tokenisation batches
    again = prepare_corpus(small_config(root / "text", tmp_path / "again"))
    for name in ["tokenizer/tokenizer.json"] + [
        f"{s}.{ext}" for s in ("train", "validation", "test") for ext in ("tokens", "docs.jsonl")
    ]:
        assert (again / name).read_bytes() == (corpus.path / name).read_bytes(), name


def test_rerun_reuses_refuses_or_overwrites(built, capsys):
    root, _, corpus = built
    prepare_corpus(small_config(root / "text", corpus.path))
    assert "already prepared with these settings" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"prepared with other settings \(split_seed: 0 -> 1\)"):
        prepare_corpus(small_config(root / "text", corpus.path, split_seed=1))
    # a recall-episode corpus does not depend on the retrieval mixture's settings
    recall = small_config(root / "text", corpus.path)
    recall.synthetic.retrieval.tasks = [0, 0, 0, 0, 0, 0, 0, 1]
    prepare_corpus(recall)
    assert "already prepared with these settings" in capsys.readouterr().out
    out = prepare_corpus(small_config(root / "text", root / "other", split_seed=1))
    assert split_ids(PreparedCorpus(out)) != split_ids(corpus)


def test_a_users_tokenizer_is_used_as_is(built, tmp_path):
    root, texts, _ = built
    tokenizer = train_tokenizer((document_text(i, 4) for i in range(50, 60)), 700)
    theirs = save_tokenizer(tokenizer, tmp_path / "theirs")
    cfg = small_config(root / "text", tmp_path / "out", tokenizer=TokenizerSettings(path=str(theirs)))
    corpus = PreparedCorpus(prepare_corpus(cfg))
    assert corpus.manifest["tokenizer"]["vocab_size"] == len(tokenizer) and corpus.manifest["tokenizer"]["source"] == str(theirs)
    assert (corpus.path / "tokenizer" / "tokenizer.json").read_text() == (theirs / "tokenizer.json").read_text()
    doc = next(corpus.documents("test", sources=["toy"]))
    assert corpus.tokenizer().decode(doc.tokens.tolist()) == texts[doc.doc_id.removeprefix("toy/")]


def test_sources_can_be_pinned_to_a_split(built, tmp_path):
    root, _, _ = built
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"text": document_text(i, 4)}) + "\n" for i in range(200, 205)))
    sources = [
        SourceConfig("text", name="toy", path=str(root / "text")),
        SourceConfig("jsonl", name="mine", path=str(held_out), split="test"),
    ]
    corpus = PreparedCorpus(prepare_corpus(small_config(root / "text", tmp_path / "out", sources=sources)))
    assert corpus.manifest["splits"]["test"]["by_source"]["mine"]["documents"] == 5
    assert "mine" not in corpus.manifest["splits"]["train"]["by_source"]


def test_the_command(tmp_path, capsys):
    write_text_corpus(tmp_path / "text", n_docs=30)
    config = tmp_path / "data.yaml"
    config.write_text(
        f"output: {tmp_path / 'out'}\nsources:\n  - kind: text\n    path: {tmp_path / 'text'}\n"
        "tokenizer:\n  vocab_size: 400\n"
        "synthetic:\n  episode_tokens: 512\n  facts: 1\n  distractors: 1\n  validation_episodes: 1\n"
    )
    assert main(["data", "prepare", "--config", str(config), "report_seq_lens=[128]", "--validation-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "prepared corpus" in out and "seq_len    128" in out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]["validation_fraction"] == 0.2
    assert main(["data", "prepare", "--config", str(config), "synthetic.facts=0"]) == 2
    assert "synthetic" in capsys.readouterr().err
