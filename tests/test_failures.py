"""What the project does with bad input and faults: never wrong results without a word, never a traceback
from deep inside a library — an error (or, where the run can go on safely, a warning) naming the file,
the field or the holder. docs/DATA.md ("What bad input gets") lists the same cases for readers."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from refine_lm.config import ConfigError, changed_settings, load_config
from refine_lm.data import prepare_corpus
from refine_lm.data.records import string_list
from refine_lm.data.tokenizer import check_vocabulary, load_tokenizer
from refine_lm.models.registry import build_model, load_model
from refine_lm.optim import OptimConfig
from refine_lm.refine.ntp import NextTokenObjective
from refine_lm.refine.objective import RefineConfig
from refine_lm.train.checkpoint import CheckpointError, RunLock, list_checkpoints
from refine_lm.train.loop import RESUMABLE_CHANGES, LoopConfig, TrainingError, train
from refine_lm.train.midtrain import TrainConfig
from refine_lm.train.pretrain import PretrainConfig

from .data_helpers import small_config, write_text_corpus


def _batch(step: int) -> torch.Tensor:
    return torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(step))


def _train(tmp_path, steps=2, run_config=None, **loop):
    model = build_model("delta_net", "tiny", seed=0)
    cfg = LoopConfig(steps=steps, batch_size=2, **loop)
    return train(cfg, OptimConfig(lr=1e-3), model, NextTokenObjective(2), _batch, tmp_path, run_config=run_config)


# ----- runs and checkpoints ------------------------------------------------------------------


def test_a_second_run_on_an_output_directory_is_refused_naming_the_holder(tmp_path):
    holder = {"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-01-01 00:00:00"}
    (tmp_path / ".lock").write_text(json.dumps(holder))  # a live process (this one) holds it
    with pytest.raises(CheckpointError, match=rf"in use by another run \(pid {os.getpid()} on"):
        _train(tmp_path)
    assert not list_checkpoints(tmp_path) and not (tmp_path / "metrics.jsonl").exists()


def test_the_lock_of_a_killed_run_is_taken_over_and_released_at_the_end(tmp_path):
    dead = 2**22 + 12345  # above the usual pid range
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead, "host": os.uname().nodename, "started": "then"}))
    with pytest.warns(UserWarning, match="taking over the lock"):
        _train(tmp_path)
    assert list_checkpoints(tmp_path) and not (tmp_path / ".lock").exists()
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_resuming_with_changed_settings_is_refused_with_the_changed_keys(tmp_path):
    _train(tmp_path, steps=2, run_config={"optim": {"lr": 1e-3}, "loop": {"steps": 2, "seed": 0}})
    with pytest.raises(TrainingError, match=r"optim\.lr: 0\.001 -> 0\.01"):
        _train(tmp_path, steps=3, run_config={"optim": {"lr": 1e-2}, "loop": {"steps": 3, "seed": 0}})
    # only extending the run is fine; so is saying so explicitly
    _train(tmp_path, steps=3, run_config={"optim": {"lr": 1e-3}, "loop": {"steps": 3, "seed": 0}})
    _train(tmp_path, steps=4, run_config={"optim": {"lr": 1e-2}, "loop": {"steps": 4}}, resume_with_changes=True)
    assert changed_settings({"model": {"preset": "tiny"}, "new": 1}, {"model": {"preset": "small"}}) == [
        "model.preset: 'tiny' -> 'small'"
    ]
    assert changed_settings({"loop": {"steps": 2}}, {"loop": {"steps": 3}}, RESUMABLE_CHANGES) == []


def test_partial_checkpoints_are_removed_and_a_corrupt_newest_one_falls_back(tmp_path):
    _train(tmp_path, steps=2, save_every=1)
    (tmp_path / ".tmp-checkpoint-0000003-999").mkdir()
    newest = list_checkpoints(tmp_path)[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.warns(UserWarning, match=r"checkpoint-0000002 is corrupt.*resuming from an older"):
        _train(tmp_path, steps=3, save_every=1)
    assert not (tmp_path / ".tmp-checkpoint-0000003-999").exists()
    assert list_checkpoints(tmp_path)[-1].name == "checkpoint-0000003"


def test_an_output_directory_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        _train(tmp_path / "run")


# ----- models and tokenizers -----------------------------------------------------------------


def test_a_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    tensors.pop("model.layers.0.attn.b_proj.weight")
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.0\.attn\.b_proj\.weight'\]"):
        load_model(tmp_path / "m")


def test_corrupt_or_absent_weights_name_the_file(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"m/model\.safetensors: cannot be read"):
        load_model(tmp_path / "m")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is not one of"):
        load_model(tmp_path / "m")


def test_model_config_typos_unknown_arch_and_preset_are_refused_at_start_up():
    with pytest.raises(ConfigError, match="no config setting 'hiden_size'"):
        load_config(PretrainConfig, None, ["model.config.hiden_size=64"])
    with pytest.raises(ConfigError, match="unknown architecture 'deltanet'"):
        load_config(PretrainConfig, None, ["model.arch=deltanet"])
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(PretrainConfig, None, ["model.preset=huge"])


def test_tokenizers_that_cannot_serve_the_model_are_refused(tmp_path, tiny_model_dir, eval_tokenizer):
    with pytest.raises(ConfigError, match="512 tokens, more than the model's vocab_size 256"):
        check_vocabulary(eval_tokenizer, 256, "m")
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    data = json.loads((tmp_path / "m" / "tokenizer.json").read_text())
    data.pop("added_tokens")
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"tokenizer .*m: cannot be loaded with AutoTokenizer \(KeyError: 'added_tokens'\)"):
        load_tokenizer(tmp_path / "m")


def test_generate_on_a_model_without_tokenizer_files_is_refused(tmp_path, tiny_model_dir):
    from refine_lm.cli.generate import resolve_tokenizer

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "m" / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match=r"no tokenizer\.json or tokenizer_config\.json"):
        resolve_tokenizer(str(tmp_path / "m"), 512)
    assert resolve_tokenizer("random:delta_net:small", 8192).encode("é") == [195, 169]  # bytes: only for random models


# ----- settings ------------------------------------------------------------------------------


def test_degenerate_rollout_and_sequence_settings_are_refused_at_start_up():
    with pytest.raises(ConfigError, match="too short for REFINE's rollouts"):
        load_config(TrainConfig, None, ["data.seq_len=64", "refine.num_chunks=8"])
    with pytest.raises(ConfigError, match="margin must be >= 0"):
        load_config(TrainConfig, None, ["refine.margin=-1"])
    with pytest.raises(ConfigError, match=r"refine\.mini_batches 3 does not divide loop\.batch_size 8"):
        load_config(TrainConfig, None, ["refine.mini_batches=3", "loop.batch_size=8"])
    with pytest.raises(ConfigError, match="seq_len must be >= 2"):
        load_config(TrainConfig, None, ["data.seq_len=1", "method=refine", "phase=post"])
    RefineConfig().check_fits(8 * 5 + 40)


def test_a_yaml_error_inside_an_override_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.seq_len: expected an integer, got '\[1'"):
        load_config(TrainConfig, None, ["data.seq_len=[1"])
    from refine_lm.eval.suite import EvalConfig

    with pytest.raises(ConfigError, match=r"lengths: '\{2' is not a valid value"):
        load_config(EvalConfig, None, ["lengths=1,{2"])


# ----- data ----------------------------------------------------------------------------------


def test_prepare_notices_added_changed_and_removed_source_files(tmp_path):
    write_text_corpus(tmp_path / "text", n_docs=12)
    cfg = small_config(tmp_path / "text", tmp_path / "out")
    prepare_corpus(cfg)
    prepare_corpus(cfg)  # unchanged: reused
    first = sorted((tmp_path / "text").glob("*.txt"))[0]
    first.write_text(first.read_text() + " One more sentence.")
    with pytest.raises(ConfigError, match=rf"changed {first.name}.*overwrite=true"):
        prepare_corpus(cfg)
    (tmp_path / "text" / "new.txt").write_text("A new document. " * 40)
    with pytest.raises(ConfigError, match=r"added new\.txt"):
        prepare_corpus(cfg)


def test_validation_that_cannot_run_says_so(tiny_corpus):
    from refine_lm.train.data import DataConfig, TrainingData

    cfg = DataConfig(corpus=str(tiny_corpus), seq_len=64, validation_seq_len=10**6, recall_sequences=0)
    data = TrainingData(cfg, 2, 0, rank=0, world_size=1)
    with pytest.warns(UserWarning, match="no validation document holds a window of 1000000 tokens"):
        data.validator()


def test_empty_answers_are_refused_and_rows_are_numbered_from_one():
    with pytest.raises(ConfigError, match=r"qa\.jsonl: row 3, column 'answer': expected a non-empty list of non-empty"):
        string_list(["Paris", ""], "qa.jsonl", 2, "answer")
    assert string_list("A|B", "qa.jsonl", 0, "answer") == ["A|B"]


def test_json_errors_read_as_sentences(tmp_path):
    from refine_lm.data.sources import SkipLog, SourceConfig, read_source

    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "unterminated\n')
    skips = SkipLog()
    list(read_source(SourceConfig(kind="jsonl", path=str(path)), skips))
    message = str(skips.items[0])
    assert "a.jsonl:2: not valid JSON (Invalid control character: column 23)" in message  # once "... at at column 23"
