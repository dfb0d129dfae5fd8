"""Batched answering of prompts with the recurrent decoder, a per-example cache, and scoring.

An :class:`Example` is one prompt with its references; a task is a list of examples plus a
scoring function. :class:`Evaluator` encodes the prompts (cutting over-long ones in the middle
where the task allows it, never from the right), sorts them by length into batches, answers each
batch with :meth:`Evaluator.generate` — the one method a test-time-training evaluator overrides —
scores the answers, and appends one JSON line per example to a cache, so an interrupted evaluation
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..ops.dtypes import autocast, resolve_precision
from .metrics import first_line


@dataclass
class Example:
    """One prompt to answer.

    id: unique within its task.
    task: the result group, e.g. ``niah_single``, ``ruler_qa``, ``longbench/hotpotqa``.
    prompt: the full prompt text, answer cue included.
    references: expected answers (all of them for NIAH; any one for QA; the best one counts for LongBench).
    max_new_tokens: generation budget.
    first_line: only the first line of the output is the answer; generation stops at a newline
        (after the first generated token, so a leading newline does not end the answer).
    truncate: over-long prompts (more tokens than the evaluator's ``max_length``) lose their middle;
        when False the prompt is always read whole (generated tasks are built to their length).
    meta: JSON-serialisable facts the scorer or the summary needs (length, depths, classes, ...).
    """

    id: str
    task: str
    prompt: str
    references: list[str]
    max_new_tokens: int
    first_line: bool = False
    truncate: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


Scorer = Callable[[Example, str], dict[str, Any]]  # (example, answer) -> {"score": float in [0, 1], ...}


def truncate_middle(ids: Sequence[int], max_length: int) -> list[int]:
    """Keep the first ``max_length // 2`` and the last ``max_length - max_length // 2`` tokens.

    Instructions sit at the start of a prompt and the question and answer cue at its end, so the
    middle of the context is what can go.
    """
    if len(ids) <= max_length:
        return list(ids)
    head = max_length // 2
    return [*ids[:head], *ids[len(ids) - (max_length - head) :]]


def newline_token_ids(tokenizer) -> list[int]:
    """Every vocabulary id whose decoded text contains a newline."""
    ids = list(range(len(tokenizer)))
    texts = tokenizer.batch_decode([[i] for i in ids])
    return [i for i, text in zip(ids, texts) if "\n" in text]


class ExampleCache:
    """Finished examples of one task as JSON lines, keyed by a hash of the example and the evaluation settings.

    Changing the model, the generation settings or a prompt changes the key, so stale answers are
    never reused; a line cut short by an interruption is ignored.
    """

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "key" in record:
                    self.records[record["key"]] = record

    def key(self, *parts: Any) -> str:
        """A hash of the fingerprint and ``parts`` (everything that determines a record)."""
        payload = json.dumps([self.fingerprint, *parts], sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()

    def example_key(self, example: Example) -> str:
        return self.key(example.task, example.id, example.prompt, example.max_new_tokens, example.first_line, example.truncate)

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:  # a line cut short by an interruption must not swallow the next record
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
            if torn:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write("\n")
        with self.path.open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.records[record["key"]] = record


@dataclass
class Throughput:
    """Tokens and seconds spent reading prompts (prefill) and generating (decode) over every example of the
    evaluation: the ``examples`` this run answered, timed now, and the ``cached_examples`` an earlier run
    answered, with the share of its batch's time that run recorded, so a re-run from the cache reports
    the figures of the run that produced the answers."""

    examples: int = 0
    cached_examples: int = 0
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0

    def add_cached(self, record: dict[str, Any]) -> None:
        self.cached_examples += 1
        if "prefill_seconds" in record:  # records written before the timings were kept count as examples only
            self.prompt_tokens += record["prompt_tokens"]
            self.generated_tokens += record["generated_tokens"]
            self.prefill_seconds += record["prefill_seconds"]
            self.decode_seconds += record["decode_seconds"]

    def as_dict(self) -> dict[str, float]:
        return {
            "examples": self.examples,
            "cached_examples": self.cached_examples,
            "prompt_tokens": self.prompt_tokens,
            "prefill_seconds": self.prefill_seconds,
            "prefill_tokens_per_s": self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0,
            "generated_tokens": self.generated_tokens,
            "decode_seconds": self.decode_seconds,
            "generated_tokens_per_s": self.generated_tokens / self.decode_seconds if self.decode_seconds else 0.0,
        }


class Evaluator:
    """Answers examples with a model: encode, truncate, batch, :meth:`generate`, decode, score, cache.

    model: a :class:`~refine_lm.models.base.FastWeightForCausalLM` (in eval mode, on ``device``).
    tokenizer: a Hugging Face tokenizer (prompts are encoded with its special tokens).
    batch_size: prompts generated together (sorted by length, padded on the left).
    max_length: prompts of truncatable tasks longer than this many tokens lose their middle.
    do_sample / temperature / top_p: greedy unless do_sample; a sampled batch is seeded from
        ``seed`` and its examples' ids.
    precision: ``auto`` (bf16 where the hardware runs it fast, else fp32), ``fp32``, or ``bf16`` autocast
        (the recurrence stays in fp32).
    fingerprint: identifies the model and settings in cache keys.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_length: int = 16384,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        precision: str = "auto",
        progress: bool = True,
        fingerprint: str = "",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.progress = progress
        self.fingerprint = fingerprint
        self.eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.newline_ids = newline_token_ids(tokenizer)
        self.throughput = Throughput()
        # per-prompt facts of the last generate() call, merged into the examples' records (a
        # test-time-training evaluator reports the cost of adapting to each prompt here)
        self.last_generation_info: list[dict[str, Any]] = []

    # ----- the generation seam ----------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop_at_newline: bool) -> list[list[int]]:
        """Answer a batch: prompt token ids -> generated token ids (up to and including a stop token).

        Greedy by default. With ``stop_at_newline`` a row also stops at any token containing a
        newline, from its second token on (the first token is free, as in LongBench's SAMSum setup).
        """
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        generator = None
        if self.do_sample:
            generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(str(prompts).encode()))
        sampling = dict(do_sample=self.do_sample, temperature=self.temperature, top_p=self.top_p, generator=generator)
        with self._autocast(), torch.no_grad():
            start = self._clock()
            read = self.model(ids, mask, return_logits=False, return_hidden="last")
            self.throughput.prefill_seconds += self._clock() - start
            self.throughput.prompt_tokens += int(mask.sum())

            start = self._clock()
            state, hidden = read.state, read.last_hidden_state[:, 0]
            heads = [[] for _ in prompts]
            budget = max_new_tokens
            if stop_at_newline and budget > 1:
                first = self.model.generate(
                    state=state, last_hidden=hidden, max_new_tokens=1, eos_token_id=self.eos_ids, return_state=True,
                    return_hidden=True, **sampling,
                )  # fmt: skip
                heads = [[t] for t in first.tokens[:, 0].tolist()]
                state, hidden, budget = first.state, first.hidden_states[:, -1], budget - 1
            stops = self.eos_ids + (self.newline_ids if stop_at_newline else [])
            out = self.model.generate(state=state, last_hidden=hidden, max_new_tokens=budget, eos_token_id=stops, **sampling)
            self.throughput.decode_seconds += self._clock() - start
        answers = []
        for row, head in enumerate(heads):
            if head and head[0] in self.eos_ids:
                answers.append(head)
            else:
                answers.append(head + out.tokens[row, : int(out.lengths[row])].tolist())
        self.throughput.generated_tokens += sum(len(a) for a in answers)
        return answers

    # ----- running a task ---------------------------------------------------------------------
    def encode(self, example: Example) -> tuple[list[int], bool]:
        """Prompt token ids and whether the middle was cut out."""
        ids = self.tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
        if example.truncate and len(ids) > self.max_length:
            return truncate_middle(ids, self.max_length), True
        return ids, False

    def run(self, examples: Sequence[Example], score: Scorer, cache: ExampleCache | None = None) -> list[dict[str, Any]]:
        """Answer and score ``examples`` (reusing cached answers); one record per example, in input order."""
        keys = [cache.example_key(e) if cache else str(i) for i, e in enumerate(examples)]
        done = {k: cache.records[k] for k in keys if cache and k in cache.records}
        pending = [(k, e) for k, e in zip(keys, examples) if k not in done]
        self.throughput.examples += len(pending)
        for key, example in zip(keys, examples):
            if key in done:  # rescored, so a change of metric never leaves a stale score
                done[key] = {**done[key], **score(example, done[key]["prediction"])}
                self.throughput.add_cached(done[key])
        if pending:
            encoded = {k: self.encode(e) for k, e in pending}
            # batches of one generation setting, longest prompts first (less padding, early out-of-memory)
            pending.sort(key=lambda ke: (ke[1].max_new_tokens, ke[1].first_line, -len(encoded[ke[0]][0])))
            batches: list[list[tuple[str, Example]]] = []
            for key, example in pending:
                if batches and len(batches[-1]) < self.batch_size and _same_setting(batches[-1][0][1], example):
                    batches[-1].append((key, example))
                else:
                    batches.append([(key, example)])
            bar = tqdm(total=len(pending), desc=examples[0].task, disable=not self.progress, leave=False)
            for batch in batches:
                head = batch[0][1]
                prompts = [encoded[k][0] for k, _ in batch]
                self.last_generation_info = []
                before = self.throughput.prefill_seconds, self.throughput.decode_seconds
                outputs = self.generate(prompts, head.max_new_tokens, head.first_line)
                prefill_share = (self.throughput.prefill_seconds - before[0]) / len(batch)
                decode_share = (self.throughput.decode_seconds - before[1]) / len(batch)
                info = self.last_generation_info or [{} for _ in batch]
                records = []
                for (key, example), output, extra in zip(batch, outputs, info, strict=True):
                    text = self.tokenizer.decode(output, skip_special_tokens=True)
                    answer = first_line(text) if example.first_line else text
                    records.append(
                        {
                            "key": key,
                            "task": example.task,
                            "id": example.id,
                            **score(example, answer),
                            "prediction": answer,
                            "output": text,
                            "references": example.references,
                            "prompt_tokens": len(encoded[key][0]),
                            "truncated": encoded[key][1],
                            "generated_tokens": len(output),
                            "prefill_seconds": prefill_share,
                            "decode_seconds": decode_share,
                            **extra,
                            "meta": example.meta,
                        }
                    )
                for record in records:
                    done[record["key"]] = record
                if cache is not None:
                    cache.add(records)
                bar.update(len(batch))
            bar.close()
        return [done[k] for k in keys]

    # ----- helpers ----------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.precision, self.device)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _same_setting(a: Example, b: Example) -> bool:
    return a.max_new_tokens == b.max_new_tokens and a.first_line == b.first_line


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (0 for no values)."""
    return sum(values) / len(values) if values else 0.0
