"""LongBench (v1), the 16 English tasks: loading both input formats, prompts, metrics.

Two input formats, told apart by their columns (in JSONL, JSON or parquet files):

- **original**: ``input``, ``context``, ``answers``, ``all_classes``, ``length``, ``dataset`` (the
  LongBench release: one ``<dataset>.jsonl`` per task). The prompt is a per-task template filled with
  ``{context}`` and ``{input}``: this project's own short templates by default, or the official ones
  from a JSON file mapping dataset -> template (``dataset2prompt.json``, downloaded with the data).
- **pre-built**: ``prompt``, ``answers``, ``max_gen_tokens``, ``task`` (one file for many tasks).

A directory is read as one file per task, named ``<dataset>.jsonl`` (or ``.json`` / ``.parquet``), as
in the LongBench release, or ``<dataset>_<anything>`` (the pre-built ``<task>_16384.parquet`` files); a
directory without such names is read whole, each row naming its task. A single file may hold rows of
many tasks.

Prompts longer than the evaluator's ``max_length`` lose their middle. Scores equal LongBench's own
scorer (``eval.py`` with its ``metrics.py``; tests check 40+ pairs per metric against it): token F1
after SQuAD normalisation (QA), ROUGE-L from the ``rouge`` package (summaries), classification match
(TREC; a file without ``all_classes`` gets the 50 classes every LongBench TREC row carries), fuzzywuzzy's
ratio of the first non-comment line (code), the share of right numbers in the answer (passage count
and retrieval); the best reference counts; x100; mean per task; the first output line only for TREC,
TriviaQA and SAMSum.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data.records import TABLE_SUFFIXES, read_records, require_columns, string_list
from .metrics import (
    RougeImplementation,
    classification_match,
    code_fuzzy_ratio,
    count_match,
    passage_match,
    rouge_l,
    token_f1,
)
from .runner import Example


@dataclass(frozen=True)
class LongBenchTask:
    metric: str  # qa_f1 | rouge_l | classification | code | count | retrieval
    max_new_tokens: int  # LongBench's per-task generation length
    first_line: bool  # only the first output line is scored (and generation stops at a newline)
    template: str  # this project's prompt: {context} and {input} are filled in


_QA = "Answer the question from the {what} below, as briefly as possible.\n\n{{context}}\n\nQuestion: {{input}}\nAnswer:"
_MULTI_DOC = "Answer the question from the passages below. Give only the answer.\n\n{context}\n\nQuestion: {input}\nAnswer:"
_CODE = "Continue the code below with its next line.\n\n{context}"

TASKS: dict[str, LongBenchTask] = {
    "narrativeqa": LongBenchTask("qa_f1", 128, False, _QA.format(what="story")),
    "qasper": LongBenchTask(
        "qa_f1",
        128,
        False,
        'Answer the question from the article below in a few words. Write "unanswerable" if the article does not say, '
        'and "yes" or "no" for a yes/no question.\n\n{context}\n\nQuestion: {input}\nAnswer:',
    ),
    "multifieldqa_en": LongBenchTask("qa_f1", 64, False, _QA.format(what="text")),
    "hotpotqa": LongBenchTask("qa_f1", 32, False, _MULTI_DOC),
    "2wikimqa": LongBenchTask("qa_f1", 32, False, _MULTI_DOC),
    "qmsum": LongBenchTask(
        "rouge_l",
        512,
        False,
        "Read the meeting transcript below, then answer the query about it.\n\n{context}\n\nQuery: {input}\nAnswer:",
    ),
    "multi_news": LongBenchTask(
        "rouge_l", 512, False, "Summarise the news articles below in one paragraph.\n\n{context}\n\nSummary:"
    ),
    "samsum": LongBenchTask(
        "rouge_l", 128, True, "Summarise the last dialogue in a sentence or two, like the examples.\n\n{context}\n\n{input}"
    ),
    "trec": LongBenchTask(
        "classification", 64, True, "Give the type of the last question, like the examples.\n\n{context}\n{input}"
    ),
    "triviaqa": LongBenchTask(
        "qa_f1", 32, True, "Answer the last question with only the answer, like the examples.\n\n{context}\n\n{input}"
    ),
    "musique": LongBenchTask("qa_f1", 32, False, _MULTI_DOC),
    "gov_report": LongBenchTask("rouge_l", 512, False, "Summarise the report below.\n\n{context}\n\nSummary:"),
    "passage_count": LongBenchTask(
        "count",
        32,
        False,
        "How many different paragraphs are there below (some may repeat)? Answer with a number only.\n\n{context}\n\n"
        "Number of different paragraphs:",
    ),
    "passage_retrieval_en": LongBenchTask(
        "retrieval",
        32,
        False,
        'Which paragraph below does the summary describe? Answer like "Paragraph 1".\n\n{context}\n\nSummary: {input}\n\nAnswer:',
    ),
    "lcc": LongBenchTask("code", 64, False, _CODE + "Next line:\n"),
    "repobench-p": LongBenchTask("code", 64, False, _CODE + "{input}Next line:\n"),
}

# The fine-grained TREC classes, as every row of LongBench's trec.jsonl lists them (its typo kept: a
# prediction is matched against these exact strings).
TREC_CLASSES = (
    "Food", "Date", "Order, rank", "Speed", "Disease and medicine", "Word with a special property", "Abbreviation",
    "Language", "Letter like a-z", "Other entity", "Animal", "Expression abbreviated", "Price", "Techniques and method",
    "Musical instrument", "Mountain", "Currency name", "Event", "Product", "State", "Individual", "Organ of body",
    "Reason", "Manner of an action", "City", "Religion", "Invention, book and other creative piece",
    "Distance, linear measure", "Temperature", "Postcode or other code", "Size, area and volume", "Sport", "Country",
    "Other location", "Lasting time of somethin", "Equivalent term", "Description of something", "Weight", "Vehicle",
    "Color", "Other number", "Definition of something", "Element and substance", "Description of a person",
    "Symbols and sign", "Number of something", "Plant", "Percent, fraction", "Group or organization of person",
    "Title of a person",
)  # fmt: skip

ORIGINAL_COLUMNS = ("input", "context", "answers")
PREBUILT_COLUMNS = ("prompt", "answers")


def check_datasets(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"unknown LongBench task {unknown[0]!r} (the {len(TASKS)} English tasks: {', '.join(TASKS)})")


def load_templates(path: str | Path | None) -> dict[str, str]:
    """Prompt templates: ours, replaced per dataset by those of a JSON file (e.g. the official dataset2prompt.json)."""
    templates = {name: task.template for name, task in TASKS.items()}
    if path is None:
        return templates
    path = Path(path)
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read LongBench prompt templates ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise ConfigError(f"{path}: expected a JSON object mapping dataset names to template strings")
    templates.update({k: v for k, v in given.items() if k in TASKS})
    return templates


def _named_task(stem: str) -> str | None:
    """The task a file name names: ``<task>`` or ``<task>_<anything>`` (the longest such task name)."""
    named = [t for t in TASKS if stem == t or stem.startswith(t + "_")]
    return max(named, key=len) if named else None


def _files(path: Path, datasets: Sequence[str]) -> list[Path]:
    """A file as given; from a directory the files naming a wanted task, else every table file (rows name their task)."""
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        return [path]
    tables = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES)
    files = [p for p in tables if _named_task(p.stem) in datasets]
    if not files and not any(_named_task(p.stem) for p in tables):
        files = tables
    if not files:
        raise ConfigError(f"{path}: no LongBench files for {', '.join(datasets)} (expected e.g. {datasets[0]}.jsonl)")
    return files


def load_longbench(
    path: str | Path, datasets: Sequence[str] = tuple(TASKS), templates_path: str | Path | None = None
) -> list[Example]:
    """Examples of the wanted LongBench tasks from a file or directory in either input format.

    Rows of other datasets are skipped; a wanted dataset without any row is an error.
    """
    check_datasets(datasets)
    templates = load_templates(templates_path)
    examples: list[Example] = []
    for file in _files(Path(path), datasets):
        rows = read_records(file)
        prebuilt = "prompt" in rows[0]
        require_columns(rows, PREBUILT_COLUMNS if prebuilt else ORIGINAL_COLUMNS, file)
        for index, row in enumerate(rows):
            name = row.get("task" if prebuilt else "dataset") or _named_task(file.stem)
            if name is None:
                column = "task" if prebuilt else "dataset"
                raise ConfigError(f"{file}: row {index + 1} has no {column!r} column and the file name does not name a task")
            if name not in datasets:
                continue
            task = TASKS[name]
            if prebuilt:
                prompt = row["prompt"]
                max_new_tokens = row.get("max_gen_tokens", task.max_new_tokens)  # 0 is an error, not the default
                if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                    raise ConfigError(f"{file}: row {index + 1}, column 'max_gen_tokens': expected a positive integer")
            else:
                try:
                    prompt = templates[name].format(context=row["context"], input=row["input"])
                except (KeyError, IndexError) as e:
                    raise ConfigError(
                        f"LongBench template for {name!r}: unknown placeholder {e} (use {{context}} and {{input}})"
                    ) from None
                max_new_tokens = task.max_new_tokens
            classes = row.get("all_classes") or (list(TREC_CLASSES) if task.metric == "classification" else [])
            examples.append(
                Example(
                    id=f"{row.get('_id') or row.get('id') or f'{file.name}/{index}'}",
                    task=f"longbench/{name}",
                    prompt=prompt,
                    references=string_list(row["answers"], file, index, "answers"),
                    max_new_tokens=max_new_tokens,
                    first_line=task.first_line,
                    truncate=True,
                    meta={"dataset": name, "all_classes": list(classes), "length": row.get("length")},
                )
            )
    found = {e.meta["dataset"] for e in examples}
    missing = [d for d in datasets if d not in found]
    if missing:
        raise ConfigError(f"{path}: no rows for LongBench task {missing[0]!r}")
    return examples


def longbench_metric(
    dataset: str, prediction: str, reference: str, all_classes: Sequence[str] = (), rouge: RougeImplementation = "rouge"
) -> float:
    """LongBench's metric of ``dataset`` for one reference, in [0, 1] (ROUGE-L from ``rouge``, see :func:`rouge_l`)."""
    metric = TASKS[dataset].metric
    if metric == "qa_f1":
        return token_f1(prediction, reference)
    if metric == "rouge_l":
        return rouge_l(prediction, reference, rouge)
    if metric == "classification":
        return classification_match(prediction, reference, all_classes)
    if metric == "count":
        return count_match(prediction, reference)
    if metric == "retrieval":
        return passage_match(prediction, reference)
    return code_fuzzy_ratio(prediction, reference)


def score_longbench(example: Example, answer: str, rouge: RougeImplementation = "rouge") -> dict[str, Any]:
    """The best score over the references (the answer is already cut to its first line where the task says so)."""
    meta = example.meta
    scores = (longbench_metric(meta["dataset"], answer, ref, meta["all_classes"], rouge) for ref in example.references)
    return {"score": max(scores)}
