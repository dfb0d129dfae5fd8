"""``refine-lm train --phase post --method refine|nested-sft|answer-sft``: post-training on long-context QA.

Each step takes a batch of examples (context + question -> answer) and makes the nested updates of
:class:`~refine_lm.train.nested.NestedObjective`: an inner REFINE (``refine``) or NTP
(``nested-sft``) step on the prompts, then an answer-SFT step; ``answer-sft`` is the baseline
without the inner step. Examples come from RULER-QA-format files (``qa.files``) or are generated
from the train split of the prepared corpus (``data.corpus``); validation uses held-out examples
generated from the validation split (or ``qa.validation_files``): answer loss and QA accuracy
(greedy answer, first line, any reference contained, as ``ruler_qa`` scores it). The loop is the
mid-training one: same metrics, checkpoints and exact resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, to_dict
from ..data import PreparedCorpus, StepBatchSampler
from ..data.qa import FactQAConfig, FactQAGenerator
from ..eval.qa import load_qa_examples, score_qa
from ..eval.runner import Evaluator, Example, truncate_middle
from ..ranks import world
from .nested import NestedObjective, QABatch, answer_sft_inputs


@dataclass
class QADataConfig:
    """Post-training examples (``--phase post``).

    files: RULER-QA-format files (JSONL / JSON / parquet with ``prompt`` and ``answer``; the first
        reference is the training target) to train on; empty: generate examples from the train
        split of ``data.corpus`` (a new example for every (seed, step, index): no epochs).
    generate: how generated examples look (lengths, facts per text, kinds).
    validation_examples: held-out examples scored at every validation (generated from the
        validation split with seed 0, or the first ones of ``validation_files``).
    validation_files: RULER-QA-format files to validate on instead.
    max_prompt_tokens: longer prompts lose their middle (never the question).
    max_new_tokens: answer length budget when validating.
    """

    files: list[str] = field(default_factory=list)
    generate: FactQAConfig = field(default_factory=FactQAConfig)
    validation_examples: int = 32
    validation_files: list[str] = field(default_factory=list)
    max_prompt_tokens: int = 16384
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        if self.validation_examples < 0 or self.max_prompt_tokens < 32 or self.max_new_tokens < 1:
            raise ValueError("need validation_examples >= 0, max_prompt_tokens >= 32 and max_new_tokens >= 1")


def encode_example(tokenizer, prompt: str, answer: str, max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids as the evaluator reads them (special tokens, middle cut) and the answer's ids:
    ``" " + answer + newline`` (the evaluator stops at the newline)."""
    prompt_ids = truncate_middle(tokenizer(prompt, add_special_tokens=True)["input_ids"], max_prompt_tokens)
    answer_ids = tokenizer(" " + answer.strip() + "\n", add_special_tokens=False)["input_ids"]
    return torch.tensor(prompt_ids, dtype=torch.long), torch.tensor(answer_ids, dtype=torch.long)


def _examples_from_rows(rows: list[dict[str, Any]], task: str, max_new_tokens: int) -> list[Example]:
    return [
        Example(
            id=str(row.get("index", i)),
            task=task,
            prompt=row["prompt"],
            references=list(row["answer"]),
            max_new_tokens=max_new_tokens,
            first_line=True,
            meta={"length": row.get("max_seq_length"), "subtask": row.get("task", task)},
        )
        for i, row in enumerate(rows)
    ]


class QATrainingData:
    """The example batch of every step (a function of the step: exact resume) and the held-out validation.

    batch_size: the global batch. Under data parallelism (``rank`` / ``world_size``, by default this
    process's) ``batch_at`` gives this rank's disjoint share of it: examples ``[rank * b, (rank + 1) * b)``
    of the step, ``b = batch_size / world_size``.
    """

    def __init__(
        self, cfg: QADataConfig, corpus: str, tokenizer, batch_size: int, seed: int,
        rank: int | None = None, world_size: int | None = None,
    ):  # fmt: skip
        if rank is None or world_size is None:
            rank, world_size = world()
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} (the global batch) does not split over {world_size} ranks")
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        self.batch_size = batch_size // world_size  # this rank's share
        self.first = rank * self.batch_size  # global index of this rank's first example
        self._corpus: PreparedCorpus | None = None
        self.corpus_path = corpus
        self.file_examples: list[Example] = []
        self.generator: FactQAGenerator | None = None
        if cfg.files:
            self.file_examples = [e for path in cfg.files for e in load_qa_examples(path, cfg.max_new_tokens, task="train_qa")]
            self.sampler = StepBatchSampler(len(self.file_examples), self.batch_size, seed, rank, world_size)
        else:
            self.generator = FactQAGenerator(self.corpus(), "train", cfg.generate, tokenizer)

    def corpus(self) -> PreparedCorpus:
        if self._corpus is None:
            self._corpus = PreparedCorpus(self.corpus_path)
        return self._corpus

    def encode(self, prompt: str, answer: str) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_example(self.tokenizer, prompt, answer, self.cfg.max_prompt_tokens)

    def examples_at(self, step: int) -> list[tuple[str, str]]:
        """(prompt, answer) of the examples of step ``step``."""
        if self.generator is not None:
            rows = [self.generator.row((self.seed, step, i)) for i in range(self.first, self.first + self.batch_size)]
            return [(r["prompt"], r["answer"][0]) for r in rows]
        return [(self.file_examples[i].prompt, self.file_examples[i].references[0]) for i in self.sampler.indices(step)]

    def batch_at(self, step: int) -> QABatch:
        pairs = [self.encode(p, a) for p, a in self.examples_at(step)]
        return QABatch([p for p, _ in pairs], [a for _, a in pairs])

    def validation_examples(self) -> list[Example]:
        n = self.cfg.validation_examples
        if not n:
            return []
        if self.cfg.validation_files:
            examples = [e for path in self.cfg.validation_files for e in load_qa_examples(path, self.cfg.max_new_tokens)]
            return examples[:n]
        generator = FactQAGenerator(self.corpus(), "validation", self.cfg.generate, self.tokenizer)
        return _examples_from_rows(generator.rows(n, seed=0), "validation_qa", self.cfg.max_new_tokens)

    def validator(self, batch_size: int = 8) -> Callable[[nn.Module], dict[str, float]]:
        """Answer loss (mean NLL per answer token, teacher-forced) and QA accuracy on the held-out examples."""
        examples = self.validation_examples()
        pairs = [self.encode(e.prompt, e.references[0]) for e in examples]

        def validate(model: nn.Module) -> dict[str, float]:
            if not examples:
                return {}
            with torch.no_grad():
                return _validate(model)

        def _validate(model: nn.Module) -> dict[str, float]:
            evaluator = Evaluator(model, self.tokenizer, batch_size=batch_size, max_length=self.cfg.max_prompt_tokens,
                                  progress=False)  # fmt: skip
            records = evaluator.run(examples, score_qa)
            return {"answer_loss": answer_loss(model, pairs, batch_size), "qa_acc": float(np.mean([r["score"] for r in records]))}

        return validate


@torch.no_grad()
def answer_loss(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int = 8) -> float:
    """Mean negative log-likelihood per answer token of (prompt ids, answer ids) pairs, teacher-forced."""
    device = next(model.parameters()).device
    nll = count = 0.0
    for i in range(0, len(pairs), batch_size):
        part = pairs[i : i + batch_size]
        ids, mask, labels = answer_sft_inputs(QABatch([p for p, _ in part], [a for _, a in part]))
        out = model(ids.to(device), attention_mask=mask.to(device), labels=labels.to(device), return_logits=False,
                    return_hidden="none")  # fmt: skip
        nll += float(out.loss) * out.num_tokens
        count += out.num_tokens
    return nll / max(count, 1)


def posttrain(cfg) -> dict[str, float]:
    """Post-train ``cfg.model`` (a :class:`~refine_lm.train.midtrain.TrainConfig` with ``phase: post``)."""
    from ..data.tokenizer import check_vocabulary, load_tokenizer
    from ..models.registry import load_model
    from .loop import train

    if cfg.phase != "post":
        raise ConfigError(f"posttrain() needs phase: post, got {cfg.phase!r}")
    cfg.refine = cfg.refine.for_phase("post")
    torch.manual_seed(cfg.loop.seed)
    model = load_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    check_vocabulary(tokenizer, model.config.vocab_size, cfg.model)
    data = QATrainingData(cfg.qa, cfg.data.corpus, tokenizer, cfg.loop.batch_size, cfg.loop.seed)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    objective = NestedObjective(cfg.method, cfg.refine, cfg.loop.micro, pad_id=pad_id)
    return train(
        cfg.loop,
        cfg.optim,
        model,
        objective,
        data.batch_at,
        cfg.output_dir,
        validate=data.validator(),
        tokenizer=tokenizer,
        run_config=to_dict(cfg),
    )
