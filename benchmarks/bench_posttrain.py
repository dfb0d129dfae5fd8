"""Post-training and test-time training compared on generated long-context QA: ``refine-lm bench posttrain``.

For every seed: post-train the base with each method (``answer-sft``, ``nested-sft``, ``refine`` =
nested REFINE) under the same budget (steps, batch, examples, learning rate), on QA generated from
the corpus's *train* split; score every resulting model and the base on one fixed held-out QA
file generated from the *test* split (``refine-lm data qa``); then answer the same file with the
model post-trained by ``ttt_on`` after test-time training — ``ntp`` and ``refine``, the same
steps and learning rate, episodic — next to its no-TTT score. Each step is the library call behind
the CLI command recorded in ``results.md`` (one per run), so a row can be re-run by hand.

Writes ``<output_dir>/results.json`` (every run: score, seconds, compute, TTT cost per example) and
``results.md`` (mean and standard deviation over seeds, per-seed scores, commands, wall time), and
prints the table. Runs that finished are reused (checkpoints, evaluation caches), so an interrupted
comparison continues where it stopped.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from refine_lm.config import load_config
from refine_lm.data.qa import FactQAConfig, QAFileConfig, write_qa_file
from refine_lm.eval.qa import load_qa_examples
from refine_lm.eval.suite import EvalConfig, make_evaluator, run_suite
from refine_lm.eval.ttt import TestTimeTrainer
from refine_lm.models.registry import load_model
from refine_lm.optim import OptimConfig
from refine_lm.refine.objective import RefineConfig
from refine_lm.train.checkpoint import list_checkpoints
from refine_lm.train.loop import LoopConfig
from refine_lm.train.metrics import read_metrics
from refine_lm.train.midtrain import TrainConfig, run_training
from refine_lm.train.posttrain import QADataConfig, answer_loss, encode_example


@dataclass
class BenchPosttrainConfig:
    """Settings of ``refine-lm bench posttrain``.

    base: the model to post-train (a checkpoint directory with its tokenizer).
    corpus: a prepared corpus; QA texts come from its train split (training), validation split
        (validation at the end of each run) and test split (the held-out evaluation file).
    qa: how the QA examples look (lengths, facts per text, kinds).
    test_examples: held-out QA examples (one file, the same for every run).
    methods: post-training methods to compare.
    seeds: one run per method and seed (training examples, REFINE sampling, TTT sampling).
    steps / batch_size / lr: the post-training budget, the same for every method.
    refine: REFINE's inner-step settings (unset reward / lambda_rl: hybrid / 0.2).
    validation_examples: held-out validation examples scored at the end of each run.
    ttt_on: the post-training method whose models test-time training adapts (``base``: the base).
    ttt: test-time-training methods to compare with no TTT.
    ttt_steps / ttt_lr / ttt_refine: test-time training (unset reward / lambda_rl: exact / 0.4).
    max_new_tokens: answer budget.
    threads: torch CPU threads (1 on a shared machine).
    device / precision: where and how everything runs.
    output_dir: runs, evaluations and the results.
    """

    base: str = "bases/delta_net"
    corpus: str = "runs/data/default"
    qa: FactQAConfig = field(default_factory=lambda: FactQAConfig(lengths=[512], facts=3))
    test_examples: int = 48
    methods: list[str] = field(default_factory=lambda: ["answer-sft", "nested-sft", "refine"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 30
    batch_size: int = 4
    lr: float = 3e-4
    refine: RefineConfig = field(default_factory=RefineConfig)
    validation_examples: int = 16
    ttt_on: str = "answer-sft"
    ttt: list[str] = field(default_factory=lambda: ["ntp", "refine"])
    ttt_steps: int = 2
    ttt_lr: float = 1e-4
    ttt_refine: RefineConfig = field(default_factory=RefineConfig)
    max_new_tokens: int = 12
    threads: int = 1
    device: str = "cpu"
    precision: str = "auto"
    output_dir: str = "runs/bench/posttrain"


def _command(words: list[str]) -> str:
    return " ".join(words)


def _yaml_list(values: list[Any]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _changed(settings: RefineConfig, prefix: str) -> list[str]:
    """``prefix.key=value`` for every REFINE setting that differs from its default (for the recorded commands)."""
    default = asdict(RefineConfig())
    return [f"{prefix}{k}={v}" for k, v in asdict(settings).items() if v != default[k]]


def post_train(cfg: BenchPosttrainConfig, method: str, seed: int, out: Path) -> dict[str, Any]:
    loop = LoopConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, seed=seed, threads=cfg.threads, device=cfg.device, precision=cfg.precision
    )
    train = TrainConfig(
        phase="post",
        method=method,
        model=cfg.base,
        qa=QADataConfig(generate=cfg.qa, validation_examples=cfg.validation_examples, max_new_tokens=cfg.max_new_tokens),
        optim=OptimConfig(lr=cfg.lr),
        loop=loop,
        refine=cfg.refine,
        output_dir=str(out),
    )
    train.data.corpus = cfg.corpus
    started = time.perf_counter()
    run_training(train)
    seconds = time.perf_counter() - started
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if r.get("split") == "train"]
    validation = [r for r in records if r.get("split") == "validation"]
    command = [
        "refine-lm train --phase post --method", method, f"model={cfg.base}", f"data.corpus={cfg.corpus}",
        f"qa.generate.lengths={_yaml_list(cfg.qa.lengths)}", f"qa.generate.facts={cfg.qa.facts}",
        f"qa.validation_examples={cfg.validation_examples}", f"qa.max_new_tokens={cfg.max_new_tokens}", f"optim.lr={cfg.lr}",
        f"loop.steps={cfg.steps}", f"loop.batch_size={cfg.batch_size}", f"loop.seed={seed}", f"loop.threads={cfg.threads}",
        f"output_dir={out}", *_changed(cfg.refine, "refine."),
    ]  # fmt: skip
    return {
        "checkpoint": str(list_checkpoints(out)[-1]),
        "train_seconds_logged": sum(r["step_seconds"] for r in steps),
        "wall_seconds": seconds,
        "compute_tokens": sum(r["compute_tokens"] for r in steps),
        "validation": validation[-1] if validation else {},
        "command": _command(command),
    }


class AnswerScoringTTT(TestTimeTrainer):
    """Test-time training that also measures, after adapting to each prompt (before restoring), the
    teacher-forced NLL of the prompt's reference answer: a signal where accuracy is 0."""

    references: dict[tuple[int, ...], torch.Tensor]  # prompt ids -> answer ids

    def adapt(self, ids, rng):
        self.current = ids[0]
        self.answer_nll = getattr(self, "answer_nll", [])
        return super().adapt(ids, rng)

    def restore(self) -> None:
        answer = self.references.get(tuple(self.current.tolist()))
        if answer is not None:
            self.answer_nll.append((answer_loss(self.model, [(self.current, answer.to(self.current.device))]), len(answer)))
        super().restore()


def evaluate(cfg: BenchPosttrainConfig, model_dir: str, qa_file: Path, out: Path, seed: int, ttt: str = "none") -> dict[str, Any]:
    eval_cfg = EvalConfig(
        model=model_dir,
        tasks=["ruler_qa"],
        qa_path=str(qa_file),
        qa_max_new_tokens=cfg.max_new_tokens,
        lengths=cfg.qa.lengths,
        batch_size=8,
        seed=seed,
        output_dir=str(out),
        progress=False,
        device=cfg.device,
        precision=cfg.precision,
        ttt=ttt,
        ttt_steps=cfg.ttt_steps,
        ttt_lr=cfg.ttt_lr,
        ttt_refine=cfg.ttt_refine,
    )
    from transformers import AutoTokenizer

    model = load_model(model_dir).to(cfg.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # teacher-forced answer loss on the same file (after adaptation, with TTT): a signal even where accuracy is 0
    pairs = [encode_example(tokenizer, e.prompt, e.references[0], eval_cfg.max_length) for e in load_qa_examples(qa_file)]
    evaluator = make_evaluator(eval_cfg, model, tokenizer, ttt_class=AnswerScoringTTT)
    if ttt != "none":
        evaluator.references = {tuple(p.tolist()): a for p, a in pairs}
    started = time.perf_counter()
    report = run_suite(eval_cfg, model, tokenizer, evaluator=evaluator)
    seconds = time.perf_counter() - started
    result = report["results"]["ruler_qa"]
    if ttt == "none":
        nll = answer_loss(model, pairs)
    else:  # examples answered from the evaluation cache were not adapted to in this run: no value for them
        scored = getattr(evaluator, "answer_nll", [])
        nll = sum(v * n for v, n in scored) / sum(n for _, n in scored) if scored else None
    command = ["refine-lm eval --model", model_dir, "--tasks ruler_qa --qa-path", str(qa_file),
               f"--qa-max-new-tokens {cfg.max_new_tokens} --lengths {','.join(map(str, cfg.qa.lengths))}",
               f"--seed {seed} --output-dir {out}"]  # fmt: skip
    if ttt != "none":
        command.append(f"--ttt {ttt} --ttt-steps {cfg.ttt_steps} --ttt-lr {cfg.ttt_lr}")
        command += [f"--{c.replace('=', ' ')}" for c in _changed(cfg.ttt_refine, "ttt-refine.")] if ttt == "refine" else []
    return {"score": result["score"], "answer_nll": nll, "ttt": result.get("ttt"), "wall_seconds": seconds,
            "command": _command(command)}  # fmt: skip


def mean_std(values: list[float], digits: int = 1) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "—"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(cfg: BenchPosttrainConfig, runs: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Mean ± std over seeds, per-seed scores, training cost (logged step seconds, compute), TTT cost per example."""
    lines = [
        f"| model | held-out QA accuracy (%) | per seed ({', '.join(map(str, cfg.seeds))}) | answer NLL (nats/token) | "
        "train seconds | train compute tokens | TTT added per example |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_seed in runs.items():
        done = [by_seed[s] for s in cfg.seeds if s in by_seed]
        trained = [r["train"] for r in done if "train" in r]
        ttt = [r["ttt"] for r in done if r.get("ttt")]
        cells = [mean_std([r["score"] for r in done]), " / ".join(f"{r['score']:.1f}" for r in done)]
        nlls = [r["answer_nll"] for r in done if r.get("answer_nll") is not None]
        cells.append(mean_std(nlls, digits=2) if nlls else "—")
        cells.append(f"{statistics.mean(t['train_seconds_logged'] for t in trained):,.0f}" if trained else "—")
        cells.append(f"{statistics.mean(t['compute_tokens'] for t in trained):,.0f}" if trained else "—")
        if ttt:
            peaks = [t["peak_bytes_max"] for t in ttt if t.get("peak_bytes_max")]
            memory = f", {max(peaks) / 2**20:,.0f} MiB peak" if peaks else ""
            cells.append(f"{statistics.mean(t['seconds_per_example'] for t in ttt):.2f} s{memory}")
        else:
            cells.append("—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    cfg = load_config(BenchPosttrainConfig, config_path, overrides)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    qa_file = out / "qa_test.jsonl"
    qa_command = (
        f"refine-lm data qa corpus={cfg.corpus} split=test examples={cfg.test_examples} seed=0 "
        f"qa.lengths={_yaml_list(cfg.qa.lengths)} qa.facts={cfg.qa.facts} output={qa_file}"
    )
    if not qa_file.is_file():
        write_qa_file(QAFileConfig(corpus=cfg.corpus, split="test", examples=cfg.test_examples, seed=0, qa=cfg.qa,
                                   output=str(qa_file)))  # fmt: skip

    base = evaluate(cfg, cfg.base, qa_file, out / "eval" / "base", seed=0)
    runs: dict[str, dict[int, dict[str, Any]]] = {"base": {seed: base for seed in cfg.seeds}}  # greedy: one evaluation
    for method in cfg.methods:
        runs[method] = {}
        for seed in cfg.seeds:
            print(f"post-training: {method}, seed {seed}", file=sys.stderr)
            trained = post_train(cfg, method, seed, out / "train" / f"{method}-s{seed}")
            scored = evaluate(cfg, trained["checkpoint"], qa_file, out / "eval" / f"{method}-s{seed}", seed)
            runs[method][seed] = {**scored, "train": trained}
    for ttt in cfg.ttt:
        name = f"{cfg.ttt_on} + {ttt.upper()}-TTT"
        runs[name] = {}
        for seed in cfg.seeds:
            model_dir = cfg.base if cfg.ttt_on == "base" else runs[cfg.ttt_on][seed]["train"]["checkpoint"]
            print(f"test-time training: {ttt} on {cfg.ttt_on}, seed {seed}", file=sys.stderr)
            runs[name][seed] = evaluate(cfg, model_dir, qa_file, out / "eval" / f"{cfg.ttt_on}-s{seed}-ttt-{ttt}", seed, ttt)

    wall = time.perf_counter() - started
    text = table(cfg, runs)
    commands = [qa_command] + [r["train"]["command"] for m in cfg.methods for r in runs[m].values()]
    commands += list(dict.fromkeys(r["command"] for by_seed in runs.values() for r in by_seed.values()))
    result = {
        "config": asdict(cfg),
        "runs": runs,
        "wall_seconds": wall,
        "environment": {"torch": torch.__version__, "machine": platform.machine(), "threads": cfg.threads},
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(f"{text}\n\nWall time: {wall / 60:.1f} min\n\n```bash\n" + "\n".join(commands) + "\n```\n")
    print(text)
    print(f"wall time {wall / 60:.1f} min; wrote {out / 'results.json'} and {out / 'results.md'}")
    return result


if __name__ == "__main__":
    main(None, sys.argv[1:])
