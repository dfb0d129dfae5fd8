"""Byte-level BPE tokenizer: exact round trip, Hugging Face directory layout, user tokenizers."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from refine_lm.config import ConfigError
from refine_lm.data import copy_tokenizer, encode_texts, load_tokenizer, save_tokenizer, train_tokenizer
from refine_lm.data.tokenizer import EOD_TOKEN, PAD_TOKEN

from .data_helpers import document_text

SAMPLES = [
    "Plain ASCII, with punctuation . , ; and  double  spaces.",
    "Accents: café, naïve, Ångström, Œuvre, façade — and an en–dash.",
    "中文字符、日本語のテキスト、한국어 텍스트",
    "Emoji 🙂👍🏽 and symbols ∑∫√ ≤ ≥ ‰ €",
    "Whitespace\t tabs\r\nCRLF lines\n\n\n  leading and trailing   ",
    "",
    " ",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tokenizer = train_tokenizer((document_text(i, 8) for i in range(30)), vocab_size=400)
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok") / "tokenizer")


def test_directory_loads_with_autotokenizer_and_round_trips_any_text(tokenizer_dir):
    assert {p.name for p in tokenizer_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tok) == 400
    assert tok.convert_tokens_to_ids([EOD_TOKEN, PAD_TOKEN]) == [0, 1]
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (0, 0, 1)
    for text in SAMPLES:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert all(i >= 2 for i in ids)  # plain text never produces a special token
        assert encode_texts(tok, [text])[0] == ids  # the batched fast path agrees
    assert tok.encode(EOD_TOKEN, add_special_tokens=False) == [0]
    assert tok.encode("x", add_special_tokens=True) == tok.encode("x", add_special_tokens=False)  # no BOS added
    special = json.loads((tokenizer_dir / "special_tokens_map.json").read_text())
    assert special == {"bos_token": EOD_TOKEN, "eos_token": EOD_TOKEN, "pad_token": PAD_TOKEN}


def test_training_is_deterministic_and_the_vocab_is_bounded():
    texts = [document_text(i, 5) for i in range(10)]
    a, b = train_tokenizer(iter(texts), 300), train_tokenizer(iter(texts), 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 300
    with pytest.raises(ConfigError, match="below 258"):
        train_tokenizer(iter(texts), 200)


def test_copy_next_to_a_checkpoint_and_load_back(tokenizer_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    copy_tokenizer(tokenizer_dir, checkpoint)
    tok = load_tokenizer(checkpoint)
    assert tok.decode(tok.encode(SAMPLES[1])) == SAMPLES[1]
    assert (checkpoint / "config.json").read_text() == "{}"


def test_a_users_own_tokenizer_directory_loads(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    theirs = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    theirs.save_pretrained(tmp_path / "theirs")  # saved the ordinary way, not with save_tokenizer
    tok = load_tokenizer(tmp_path / "theirs")
    assert encode_texts(tok, ["hello world", "world unknown"]) == [[3, 4], [4, 0]]


def test_bad_tokenizer_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"no tokenizer\.json or tokenizer_config\.json"):
        load_tokenizer(tmp_path)
