"""RULER QA (SQuAD / HotpotQA format): loading prompt files, a generator of made-up ones, scoring.

A QA file (JSONL, JSON or parquet) has a ``prompt`` column (instruction + numbered documents +
question + "Answer:") and an ``answer`` column (a list of reference strings); the public files
also carry ``max_seq_length`` and ``task``, which group the results. The score is 1 when any
reference occurs, ignoring case, in the first line of the output. Over-long prompts lose their
middle (the documents), never the question.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data.records import TABLE_SUFFIXES, read_records, require_columns, string_list
from ..data.reserved import ADJECTIVES, NOUNS, words
from .metrics import contains_any
from .runner import Example
from .synthetic import fit_count

QA_COLUMNS = ("prompt", "answer")

_FIRST_NAMES = words("Alda Bren Cato Dara Elin Fenn Gale Hale Ivo Juna Kell Lior Mira Nael Orin Pell Quin Rhea Sev Tam Ula")
_LAST_NAMES = words("Ashgrove Birchley Coldwater Dunmore Eastwick Fairholm Greyling Hartwell Ironside Kestrel Larkin Marlow")
_TOWN_HEADS = words("Bel Cor Dun Est Fal Gor Hal Ith Kel Lor Mor Nes Ost Pel Rav Sel Tor Vel")
_TOWN_TAILS = words("ford mere wick ton holm by stead wood field port")

INSTRUCTION = "Answer the question using the documents below. Reply with a short answer only."


def qa_files(path: str | Path) -> list[Path]:
    """The QA files at ``path``: the file itself, or every JSONL/JSON/parquet file of a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES)
        if not files:
            raise ConfigError(f"{path}: no .jsonl, .json or .parquet files in the directory")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [path]


def load_qa_examples(
    path: str | Path, max_new_tokens: int = 32, task: str = "ruler_qa", limit: int | None = None
) -> list[Example]:
    """Examples from RULER QA files (``prompt``, ``answer``; optional ``max_seq_length``, ``task``); ``limit``:
    the first rows of each file (a directory's later files are reached too)."""
    examples = []
    for file in qa_files(path):
        rows = read_records(file)[:limit]
        require_columns(rows, QA_COLUMNS, file)
        for index, row in enumerate(rows):
            if not isinstance(row["prompt"], str) or not row["prompt"].strip():
                raise ConfigError(f"{file}: row {index + 1}, column 'prompt': expected a non-empty string")
            examples.append(
                Example(
                    id=f"{file.name}/{row.get('index', index)}",
                    task=task,
                    prompt=row["prompt"],
                    references=string_list(row["answer"], file, index, "answer"),
                    max_new_tokens=max_new_tokens,
                    first_line=True,
                    truncate=True,
                    meta={"subtask": str(row.get("task", "qa")), "length": row.get("max_seq_length")},
                )
            )
    return examples


def score_qa(example: Example, answer: str) -> dict[str, Any]:
    """1 if any reference occurs in the answer (already cut to its first line), ignoring case."""
    return {"score": contains_any(answer, example.references)}


# ----- made-up QA prompts ---------------------------------------------------------------------
def _town(rng: random.Random) -> str:
    return rng.choice(_TOWN_HEADS) + rng.choice(_TOWN_TAILS)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _fact(rng: random.Random, used: set[str]) -> dict[str, str]:
    """A made-up landmark with a builder, a town and a year (its name unique among ``used``)."""
    while True:
        name = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} of {_town(rng)}"
        if name not in used:
            used.add(name)
            break
    return {"name": name, "builder": _person(rng), "town": _town(rng), "year": str(rng.randrange(1450, 1950))}


def _document(fact: dict[str, str]) -> str:
    name = fact["name"][0].upper() + fact["name"][1:]
    return (
        f"{name} was built by {fact['builder']} in {fact['year']}. It later moved to {fact['town']}, "
        f"where it still stands. People who visit {fact['name']} often mention {fact['builder']}."
    )


_QUESTIONS = (
    ("Who built {name}?", "builder"),
    ("In what year was {name} built?", "year"),
    ("In which town does {name} stand today?", "town"),
)


def synthetic_qa_rows(tokenizer, lengths: Sequence[int], per_length: int, seed: int = 0) -> list[dict[str, Any]]:
    """RULER-QA-format rows from made-up documents, each prompt fitted to a token length.

    One document answers the question; the others are distractors about other made-up landmarks.
    The answer document sits at a seeded random position. Rows: ``prompt``, ``answer`` (one
    reference), ``max_seq_length``, ``task`` (``synthetic_qa``), ``index``.
    """
    rows = []
    for length in lengths:
        for i in range(per_length):
            rng = random.Random(f"synthetic_qa/{seed}/{length}/{i}")
            used: set[str] = set()
            gold = _fact(rng, used)
            question_template, field = rng.choice(_QUESTIONS)
            question = question_template.format(name=gold["name"])
            where = rng.random()
            distractors: list[dict[str, str]] = []

            def prompt_of(n: int, gold=gold, question=question, where=where, distractors=distractors, rng=rng, used=used) -> str:
                while len(distractors) < n:
                    distractors.append(_fact(rng, used))
                docs = distractors[:n]
                docs.insert(round(where * n), gold)
                body = "\n\n".join(f"Document {j + 1}:\n{_document(d)}" for j, d in enumerate(docs))
                return f"{INSTRUCTION}\n\n{body}\n\nQuestion: {question}\nAnswer:"

            tokens_of = lambda n, prompt_of=prompt_of: len(tokenizer(prompt_of(n), add_special_tokens=True)["input_ids"])
            count = fit_count(tokens_of, length, "synthetic QA")
            rows.append(
                {
                    "index": i,
                    "prompt": prompt_of(count),
                    "answer": [gold[field]],
                    "max_seq_length": length,
                    "task": "synthetic_qa",
                }
            )
    return rows


def synthetic_qa_examples(tokenizer, lengths: Sequence[int], per_length: int, seed: int = 0, max_new_tokens: int = 32):
    """:func:`synthetic_qa_rows` as examples of the ``synthetic_qa`` task."""
    return [
        Example(
            id=f"{row['max_seq_length']}/{row['index']}",
            task="synthetic_qa",
            prompt=row["prompt"],
            references=row["answer"],
            max_new_tokens=max_new_tokens,
            first_line=True,
            truncate=True,
            meta={"subtask": row["task"], "length": row["max_seq_length"]},
        )
        for row in synthetic_qa_rows(tokenizer, lengths, per_length, seed)
    ]
