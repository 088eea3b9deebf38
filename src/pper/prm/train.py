"""`pper prm train RUN` and `pper prm score RUN`: the PRM trained on a run's line labels, and its line scores.

Training: the labelled programs (`pper prm label`) are split by task, seeded by the run's seed: `prm.validation`
of the labelled tasks are held out (the run's own validation and held-out tasks are never labelled, as they are
never sampled). `prm.steps` AdamW steps, each on `prm.batch_size` programs drawn at random from the training
tasks' programs, minimise the mean binary cross-entropy over their lines (`pper.prm.model`). On the validation
tasks' lines it reports the ROC AUC of the PRM's scores and of two baselines (`pper.prm.metrics`): the policy's
mean token log-probability of the line, measured before training on the same text, and the line's relative
position; with each set's class balance. The PRM is saved as `RUN/prm/` (or `out`).

Every `prm.checkpoint_every` steps the training state (trained weights, head, optimizer, both generators, the
losses so far, the seconds spent) is written atomically beside the target, `RUN/prm.checkpoint/`; a killed
`pper prm train` run again resumes from it and ends where an uninterrupted one would have, provided the labels
and settings are the same (a fingerprint of them is kept with it). More `steps` than the checkpoint's resume it
(the learning rate is constant and batches are drawn step by step); a checkpoint of other labels or settings, or
one that cannot be read, is moved aside to `RUN/prm.checkpoint.stale/` with a warning and the training starts
over. The checkpoint is removed once the PRM is saved. One training at a time per target (a lock beside it).

The validation AUCs are also given per program source (`auc_by_model`: the lines of the programs of each `model`
in the buffer), since a labelled set may mix sources, such as the model's programs and the references.

Scoring writes the PRM's score of every line of the run's tested programs into the buffer (`prm_scores`, under
the PRM's id: its directory's name and training time), 64 programs per transaction; a second call scores only
the programs not scored yet. Lines that are not scored (a completion task's prompt lines, lines cut off by
`prm.max_length`) get no score and no loss, and do not enter the AUCs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..buffer import BUFFER_FILE, ReplayBuffer
from ..errors import PperError
from ..files import exclusive, remove_dir, replace_dir, restore_dir
from .config import PrmConfig
from .metrics import position_scores, roc_auc
from .model import INFO_FILE, PRM, LineInput, line_input

PRM_DIR = "prm"
CHECKPOINT_SUFFIX = ".checkpoint"
CHECKPOINT_STATE = "state.pt"
CHECKPOINT_INFO = "checkpoint.json"


def split_tasks(task_ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) task ids: a seeded `fraction` of them (at least one when there are two or more)
    held out."""
    ids = sorted(task_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = 0 if len(ids) < 2 or fraction == 0 else min(len(ids) - 1, max(1, round(fraction * len(ids))))
    val = sorted(ids[i] for i in order[:n_val])
    return [t for t in ids if t not in set(val)], val


def line_logprobs(prm: PRM, item: LineInput) -> dict[int, float]:
    """The policy's mean token log-probability of each scored line of `item` (1-based line -> value): over the
    tokens after the previous scored line's last token (or from the program's first token) up to this line's."""
    import torch

    device = next(prm.model.parameters()).device
    ids = torch.tensor([item.ids], device=device)
    with torch.no_grad():
        logp = prm.model(input_ids=ids).logits[0].float().log_softmax(-1)
    token = [float("nan")] + [float(logp[t - 1, item.ids[t]]) for t in range(1, len(item.ids))]
    out, previous = {}, max(item.start, 1) - 1
    for i in item.scored:
        position = item.positions[i]
        span = [x for x in token[previous + 1 : position + 1] if x == x] or [token[position]]
        out[i + 1] = sum(span) / len(span)
        previous = max(previous, position)
    return out


def train_prm(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train the run's PRM (see the module's docstring); returns what `prm.json` records."""
    import torch

    from ..generation import load_model

    run_dir = Path(run_dir)
    from ..pipeline import run_config_with_buffer

    run_config = run_config_with_buffer(run_dir)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    config = PrmConfig.model_validate({**run_config.prm.model_dump(), **given})
    with ReplayBuffer(run_dir / BUFFER_FILE) as buffer:
        searches = buffer.line_searches()
        programs = {p.id: p for p in buffer.programs()}
        tasks = {t.id: t for t in buffer.tasks()}
    if not searches:
        raise PperError(f"{run_dir} has no line labels: run `pper prm label {run_dir}` first")
    labelled_tasks = sorted({programs[i].task_id for i in searches})
    train_ids, val_ids = split_tasks(labelled_tasks, config.validation, run_config.seed)
    start = time.perf_counter()
    torch.manual_seed(run_config.seed)
    model, tokenizer, name = load_model(run_config.generation.model, run_config.generation.dtype)
    prm = PRM(model, tokenizer, config.method, run_config.training.lora)
    items: dict[str, list[tuple[LineInput, list[int]]]] = {"train": [], "validation": []}
    validation_ids = []
    for pid, search in sorted(searches.items()):
        p = programs[pid]
        item = line_input(tasks[p.task_id], p.text, tokenizer, config.max_length)
        split = "train" if p.task_id in train_ids else "validation"
        items[split].append((item, list(search.labels)))
        validation_ids += [pid] if split == "validation" else []
    baseline = [line_logprobs(prm, item) for item, _ in items["validation"]]  # the policy, before training
    optimizer = torch.optim.AdamW(prm.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(run_config.seed)
    target = Path(out).resolve() if out else run_dir / PRM_DIR
    checkpoint = target.with_name(target.name + CHECKPOINT_SUFFIX)
    fingerprint = _fingerprint(config, run_config, searches, programs)
    losses: list[float] = []
    earlier = 0.0  # seconds spent by killed attempts up to their checkpoint
    with exclusive(target.with_name(target.name + ".lock"), f"the PRM training of {target}"):
        resumed = _load_checkpoint(checkpoint, fingerprint, config.steps, prm, optimizer, rng)
        if resumed:
            losses, earlier = list(resumed["losses"]), resumed["seconds"]
        if not items["train"]:
            raise PperError("every labelled task fell in the PRM's validation split: label more tasks")
        steps: Any = range(len(losses), config.steps)
        if show_progress:
            from ..progress import progress

            status = lambda _: f"loss {losses[-1]:.4f}"  # noqa: E731
            steps = progress(steps, config.steps, "training the PRM", "steps", status, done=len(losses))
        for step in steps:
            batch = [items["train"][i] for i in rng.integers(0, len(items["train"]), config.batch_size)]
            losses.append(_backward(prm, batch))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            every = config.checkpoint_every
            if every and (step + 1) % every == 0 and step + 1 < config.steps:
                seconds = earlier + time.perf_counter() - start
                _save_checkpoint(checkpoint, fingerprint, prm, optimizer, rng, losses, seconds)
        models = [programs[pid].model for pid in validation_ids]
        auc, by_model = _validation_aucs(prm, items["validation"], baseline, models)
        info = {
            "id": f"{target.name}@{int(time.time())}",
            "base_model": run_config.generation.model,
            "dtype": run_config.generation.dtype,
            "model_name": name,
            "steps": config.steps,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "max_length": config.max_length,
            "losses": losses,
            "train_tasks": train_ids,
            "validation_tasks": val_ids,
            "balance": {"train": _balance(items["train"]), "validation": _balance(items["validation"])},
            "auc": auc,
            "auc_by_model": by_model,
            "seconds": round(earlier + time.perf_counter() - start, 1),
            "resumed_at": resumed["step"] if resumed else None,
        }
        save_prm(prm, target, info)
        remove_dir(checkpoint)
        return {"dir": str(target), **info}


def _backward(prm: PRM, batch: list[tuple[LineInput, list[int]]]) -> float:
    """Accumulate the gradient of one step's loss, the mean binary cross-entropy over the batch's scored lines;
    returns that loss."""
    import torch

    lines = max(1, sum(len(item.scored) for item, _ in batch))
    total = 0.0
    for item, labels in batch:
        if not item.scored:
            continue
        logits = prm.logits(item)
        target = torch.tensor([labels[i] for i in item.scored], dtype=logits.dtype, device=logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / lines
        loss.backward()
        total += loss.item()
    return total


def _validation_aucs(
    prm: PRM, validation: list[tuple[LineInput, list[int]]], baseline: list[dict[int, float]], models: list[str]
) -> tuple[dict[str, float | None], dict[str, dict[str, Any]]]:
    """ROC AUCs on the validation programs' scored lines of the PRM and of both baselines (`baseline`: the policy's
    line log-probabilities, from before training; the line's position): over all lines, and per program source
    (`models`, each program's `model`) with its lines and good lines."""
    flat: dict[str, list[Any]] = {"labels": [], "prm": [], "logprob": [], "position": [], "model": []}
    for (item, labels), logprobs, model in zip(validation, baseline, models, strict=True):
        scores, position = prm.scores(item), position_scores(len(labels))
        for line in scores:  # the scored lines: not a completion task's given prompt, not cut off
            flat["labels"].append(labels[line - 1])
            flat["prm"].append(scores[line])
            flat["logprob"].append(logprobs[line])
            flat["position"].append(position[line - 1])
            flat["model"].append(model)

    def aucs(keep: list[bool]) -> dict[str, float | None]:
        labels = [x for x, k in zip(flat["labels"], keep, strict=True) if k]
        return {s: roc_auc([x for x, k in zip(flat[s], keep, strict=True) if k], labels)
                for s in ("prm", "logprob", "position")}  # fmt: skip

    by_model = {}
    for m in sorted(set(flat["model"])):
        keep = [n == m for n in flat["model"]]
        good = sum(x for x, k in zip(flat["labels"], keep, strict=True) if k)
        by_model[m] = {"lines": sum(keep), "good": good, "auc": aucs(keep)}
    return aucs([True] * len(flat["labels"])), by_model


def _balance(split: list[tuple[LineInput, list[int]]]) -> dict[str, Any]:
    """The class balance of a split's scored lines."""
    labels = [ls[i] for item, ls in split for i in item.scored]
    return {"programs": len(split), "lines": len(labels), "good": sum(labels),
            "good_share": sum(labels) / len(labels) if labels else None}  # fmt: skip


def _fingerprint(config: PrmConfig, run_config: Any, searches: dict[int, Any], programs: dict[int, Any]) -> str:
    """What a checkpoint must match to be resumed: the training's settings but `steps`, the model, the labelled
    programs and their labels."""
    keep = config.model_dump(include={"method", "batch_size", "learning_rate", "validation", "max_length"})
    data = {
        "prm": keep,
        "lora": run_config.training.lora.model_dump(),
        "seed": run_config.seed,
        "model": [run_config.generation.model, run_config.generation.dtype],
        "labels": sorted(
            [pid, programs[pid].task_id, programs[pid].text, list(s.labels)] for pid, s in searches.items()
        ),  # fmt: skip
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _save_checkpoint(path: Path, fingerprint: str, prm: PRM, optimizer: Any, rng: Any, losses: list[float],
                     seconds: float) -> None:  # fmt: skip
    """The training state at the end of step len(losses), written aside and renamed into `path`."""
    import torch

    staging = path.with_name(path.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    prm.save(staging, {})
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, staging / CHECKPOINT_STATE)
    info = {"fingerprint": fingerprint, "step": len(losses), "losses": losses, "seconds": seconds,
            "rng": rng.bit_generator.state}  # fmt: skip
    (staging / CHECKPOINT_INFO).write_text(json.dumps(info))  # last: a staging directory without it is incomplete
    replace_dir(staging, path)


def _load_checkpoint(
    path: Path, fingerprint: str, steps: int, prm: PRM, optimizer: Any, rng: Any
) -> dict[str, Any] | None:
    """Restore the checkpoint at `path` into `prm`, `optimizer` and `rng` when it matches `fingerprint` and is
    before step `steps`; its info (step, losses, seconds), or None: no checkpoint, or one that does not match or
    cannot be read, which is moved aside (`PATH.stale`) with a warning."""
    import warnings

    import torch
    from safetensors.torch import load_file

    from .model import BACKBONE_FILE, HEAD_FILE

    restore_dir(path)
    if not path.exists():
        return None
    why = None
    try:
        info = json.loads((path / CHECKPOINT_INFO).read_text())
        if info.get("fingerprint") != fingerprint:
            why = "was written for other labels or settings"
        elif info["step"] >= steps:
            why = f"is at step {info['step']}, not before the {steps} steps asked for"
        else:  # everything read before anything is restored
            params = {n: p for n, p in prm.model.named_parameters() if p.requires_grad}
            weights, head = load_file(path / BACKBONE_FILE), load_file(path / HEAD_FILE)
            state = torch.load(path / CHECKPOINT_STATE, weights_only=True)
            generator = info["rng"]
            if set(weights) != set(params) or set(head) != set(prm.head.state_dict()):
                raise ValueError("its weights are not this PRM's")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        why = f"cannot be read ({e})"
    if why is None:
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        prm.head.load_state_dict(head)
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = generator
        torch.set_rng_state(state["torch_rng"])
        return info
    stale = path.with_name(path.name + ".stale")
    remove_dir(stale)
    path.rename(stale)
    warnings.warn(f"the PRM checkpoint {path} {why}: moved to {stale}, training from the start", stacklevel=3)
    return None


def save_prm(prm: PRM, target: Path, info: dict[str, Any]) -> None:
    """`prm.save(target, info)`, an earlier PRM's `prm.json` there removed first: `save` writes it last, so a save
    killed half-way over an earlier PRM leaves a directory `prm_dir` refuses, never the earlier `prm.json` beside
    half-written weights."""
    (target / INFO_FILE).unlink(missing_ok=True)
    prm.save(target, info)


def prm_dir(config: Any, run_dir: str | Path) -> Path:
    """The PRM a run uses: `prm.model`, else RUN/prm; a clear error when it is not a trained PRM."""
    path = Path(config.prm.model) if config.prm.model else Path(run_dir) / PRM_DIR
    if not (path / INFO_FILE).is_file():
        raise PperError(
            f"no trained PRM at {path} (no {INFO_FILE}): set prm.model to a `pper prm train` output, "
            f"or run `pper prm label` and `pper prm train` on {run_dir} first"
        )
    return path


def score_programs(buffer: ReplayBuffer, prm: PRM, max_length: int, show_progress: bool = False) -> dict[str, Any]:
    """Store `prm`'s line scores of the buffer's tested programs it has not scored yet, 64 programs per
    transaction (a killed scoring keeps what it stored and a second call resumes); returns a summary."""
    tasks = {t.id: t for t in buffer.tasks()}
    done = set(buffer.prm_scores(prm.info["id"]).get(prm.info["id"], {}))
    todo = [p for p in buffer.programs() if p.result is not None and p.id not in done]
    items: Any = todo
    if show_progress:
        from ..progress import progress

        items = progress(todo, len(todo), "scoring", "programs")
    scores, lines = {}, 0
    for p in items:
        scores[p.id] = prm.scores(line_input(tasks[p.task_id], p.text, prm.tokenizer, max_length))
        lines += len(scores[p.id])
        if len(scores) >= 64:
            buffer.add_prm_scores(prm.info["id"], scores)
            scores = {}
    buffer.add_prm_scores(prm.info["id"], scores)
    return {"prm": prm.info["id"], "programs": len(todo), "already": len(done), "lines": lines}


def score_run(run_dir: str | Path, path: str | Path | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Write the line scores of the PRM at `path` (default: the run's, `prm_dir`) of every tested program of the
    run into its buffer; returns a summary."""
    run_dir = Path(run_dir)
    from ..pipeline import run_config_with_buffer

    run_config = run_config_with_buffer(run_dir)
    prm = PRM.load(path or prm_dir(run_config, run_dir))
    with ReplayBuffer(run_dir / BUFFER_FILE) as buffer:
        return score_programs(buffer, prm, run_config.prm.max_length, show_progress)
