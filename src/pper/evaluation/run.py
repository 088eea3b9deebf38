"""`pper eval` as a function: check the options, load the model, choose the output directory, refuse to continue
an evaluation made with other settings, and run the plain, multi-turn or best-of-n evaluation.

The output directory (default `evals/NAME_SOURCE`, NAME the model's path relative to the working directory, a run
with its kept round, or a hub or embedded model's name; for `--samples`, the file's path) holds `eval.json`, the
settings its samples were made with: the model and where it was loaded from, the tasks and split, the decoding
(mode, n, temperature and seed where they matter, max new tokens, dtype), the turns and feedback size, the
best-of-n criterion and PRM, and for a samples file the sha256 of its content. An evaluation resumes (it samples
and tests only what is missing) only in a directory whose `eval.json` has the same settings; any other is refused
with the settings that differ, so one model's metrics are never reported under another's name. `--limit` is not
a setting: a larger limit extends an evaluation with more tasks.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PperError
from ..files import write_atomic

SETTINGS_FILE = "eval.json"


@dataclass(frozen=True)
class EvalOptions:
    """What `pper eval` was asked (the CLI's options, defaults included)."""

    source: str
    split: str | None = None
    limit: int | None = None
    model: str | None = None
    samples_file: str | None = None
    n: int = 1
    ks: Sequence[int] | None = None  # None: pass@1 (with --turns, pass@t of the independent samples)
    temperature: float = 0.8
    out_dir: str | None = None
    batch_size: int = 32
    max_new_tokens: int = 300
    dtype: str = "float32"
    workers: int | None = None
    seed: int = 0
    turns: int = 1
    independent: bool | None = None
    feedback_chars: int = 1000
    select: str | None = None
    prm_path: str | None = None


@dataclass(frozen=True)
class EvalOutcome:
    """Where an evaluation was written, under which model name, and its metrics (as in `metrics.json`)."""

    target: Path
    samples: Path
    name: str
    result: dict[str, Any]


def check_options(o: EvalOptions) -> list[int]:
    """Refuse option combinations that would be ignored or contradict each other; the pass@k values to compute."""
    if o.samples_file and o.model:
        raise PperError("--model samples programs; --samples scores programs already written: give one of them")
    if o.turns > 1 and (o.samples_file or o.n > 1):
        raise PperError("--turns repairs a greedy program with the model: not with --samples or --n")
    if o.turns > 1 and o.ks is not None:
        raise PperError(f"--turns {o.turns} reports pass@1..{o.turns} of independent samples itself: drop --k")
    if o.turns == 1 and o.independent is not None:
        raise PperError("--independent/--no-independent is about the samples beside repair turns: it needs --turns")
    if o.select and (o.samples_file or o.turns > 1 or o.n < 2):
        raise PperError("--select chooses one of --n N >= 2 programs sampled per task: not with --samples or --turns")
    if o.select and o.ks is not None:
        raise PperError(f"--select reports pass@1 and pass@{o.n} of the samples itself: drop --k")
    if o.select == "prm" and o.prm_path is None:
        raise PperError("--select prm needs --prm DIR, a trained PRM (`pper prm train` writes RUN/prm)")
    if o.prm_path and o.select != "prm":
        raise PperError("--prm is the PRM of --select prm")
    ks = sorted(set(o.ks or [1]))
    if ks[0] < 1:
        raise PperError(f"pass@k needs k >= 1, got --k {','.join(map(str, o.ks or []))}")
    if ks[-1] > o.n:
        raise PperError(f"pass@{ks[-1]} needs --n {ks[-1]} or more samples per task")
    return ks


def _shown(path: str | Path) -> str:
    """`path` relative to the working directory where it lies under it, else absolute."""
    resolved = Path(path).expanduser().resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def default_dir(label: str, source: str) -> Path:
    return Path("evals") / re.sub(r"[^\w.-]+", "_", f"{label}_{source}").strip("_")


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def claim(target: Path, settings: dict[str, Any]) -> None:
    """Record `settings` in `target`/eval.json, or check that the evaluation already there was made with them."""
    path = target / SETTINGS_FILE
    if path.exists():
        before = json.loads(path.read_text())
        differ = [k for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k)]
        if differ:
            shown = "; ".join(f"{k}: {before.get(k)!r} there, {settings.get(k)!r} now" for k in differ)
            raise PperError(
                f"{target} holds an evaluation made with other settings ({shown}): give another --out, "
                "or remove that directory to start it again"
            )
        return
    if any(target.glob("samples*.jsonl*")) or (target / "metrics.json").exists():
        raise PperError(
            f"{target} holds an evaluation without a record of its settings ({SETTINGS_FILE}; written by an older "
            "pper): give another --out, or remove that directory to start it again"
        )
    target.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(settings, indent=2) + "\n")


def _settings(o: EvalOptions, model: str | None, loaded_from: str | None, ks: Sequence[int]) -> dict[str, Any]:
    sampled = o.n > 1 or (o.turns > 1 and o.independent is not False)
    return {
        "model": model,
        "loaded_from": loaded_from,
        "samples_sha256": _sha256(o.samples_file) if o.samples_file else None,
        "tasks": o.source,
        "split": o.split,
        "mode": None if o.samples_file else ("sample" if o.n > 1 else "greedy"),
        "n": o.n,
        "temperature": o.temperature if sampled and not o.samples_file else None,
        "seed": o.seed if sampled and not o.samples_file else None,
        "max_new_tokens": None if o.samples_file else o.max_new_tokens,
        "dtype": None if o.samples_file else o.dtype,
        "turns": o.turns,
        "feedback_chars": o.feedback_chars if o.turns > 1 else None,
        "select": o.select,
        "prm": _shown(o.prm_path) if o.prm_path else None,
    }


def run_eval(o: EvalOptions) -> EvalOutcome:
    """Evaluate a model (or a samples file) on `o.source`: sample, test and score, resumably (see the module)."""
    from ..execution import Executor
    from ..tasks import load_tasks
    from .evaluate import evaluate

    ks = check_options(o)
    tasks = load_tasks(o.source, o.split, o.limit)
    sampler = None
    if o.samples_file is not None:
        name = Path(o.samples_file).stem
        label, loaded_from = str(Path(_shown(o.samples_file)).with_suffix("")), None
    else:
        from ..generation import DEFAULT_MODEL, load_model, resolve_model, transformers_sampler
        from ..generation.config import GenerationConfig
        from ..pipeline import is_run_dir, kept_model

        loaded = None
        if o.model and is_run_dir(o.model):  # a run: its kept model, named after the run and the kept round
            model_dir, kept = kept_model(o.model)
            name = f"{Path(o.model).resolve().name}-round-{kept['round']}"
            label, loaded_from = f"{_shown(o.model)}-round-{kept['round']}", _shown(model_dir)
            loaded = (*load_model(str(model_dir), o.dtype)[:2], name)
        config = GenerationConfig(
            model=o.model or DEFAULT_MODEL,
            batch_size=o.batch_size,
            max_new_tokens=o.max_new_tokens,
            dtype=o.dtype,
            temperature=o.temperature,
        )
        if loaded is None:
            name, where = resolve_model(config.model)
            local = isinstance(where, Path) and Path(config.model).expanduser().exists()
            label, loaded_from = (_shown(config.model) if local else name), (_shown(where) if local else str(where))
        sampler = transformers_sampler(config, o.seed, loaded)
        name = sampler.name
    target = Path(o.out_dir) if o.out_dir else default_dir(label, o.source)
    claim(target, _settings(o, name, loaded_from, ks))
    samples = target / "samples.jsonl"
    if o.samples_file is not None and Path(o.samples_file).resolve() != samples.resolve():
        shutil.copyfile(o.samples_file, samples)
    info = {"model": name, "tasks": o.source, "split": o.split}
    with Executor(workers=o.workers) as executor:
        if o.select:
            from ..prm.model import PRM
            from .best_of_n import evaluate_best_of_n

            prm_model = PRM.load(o.prm_path) if o.prm_path else None
            result = evaluate_best_of_n(tasks, samples, executor, sampler, o.n, o.select, prm_model,
                                        metrics_path=target / "metrics.json", info=info)  # fmt: skip
        elif o.turns > 1:
            from .multiturn import evaluate_turns

            result = evaluate_turns(
                tasks, samples, executor, sampler, o.turns, o.feedback_chars, o.independent is not False,
                target / "metrics.json", info,
            )  # fmt: skip
        else:
            result = evaluate(
                tasks,
                samples,
                executor,
                sampler=sampler,
                mode="greedy" if o.n == 1 else "sample",
                n=o.n,
                ks=ks,
                metrics_path=target / "metrics.json",
                info=info,
            )
    return EvalOutcome(target, samples, name, result)
