"""A PRM as a dense reward for GRPO (`rl.prm_weight`, `pper.rl.dense`): the line normalisation, the token -> line
mapping, and through a real GRPOTrainer step: the advantages the loss receives are A_i + w * D per token."""

from __future__ import annotations

import numpy as np
import pytest

from pper.config import validate_config
from pper.errors import PperError
from pper.rl.dense import EPS, completion_ends, completion_lines, line_advantages, token_advantages
from pper.rl.reward import program_for
from pper.tasks import AssertTests, Task
from tiny_grpo import tiny_grpo

W = 0.5


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from pper.generation.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("default")[1])


def test_line_scores_are_normalised_over_the_groups_scored_lines():
    scores = [{3: 0.2, 4: 0.8}, {3: 0.5}, {}]
    sd = np.std([0.2, 0.8, 0.5], ddof=1)
    dense = line_advantages(scores)
    assert dense[2] == {} and dense[0].keys() == {3, 4} and dense[1].keys() == {3}
    assert dense[0][3] == pytest.approx((0.2 - 0.5) / (sd + EPS)) and dense[1][3] == pytest.approx(0.0)
    assert dense[0][4] == pytest.approx((0.8 - 0.5) / (sd + EPS))
    assert line_advantages([{1: 0.9}, {}]) == [{1: 0.0}, {}]  # fewer than 2 scored lines
    assert line_advantages([{1: 0.3, 2: 0.3}, {5: 0.3}]) == [{1: 0.0, 2: 0.0}, {5: 0.0}]  # sd 0


def test_the_advantage_is_a_i_outside_scored_lines_and_for_w_0():
    lines, dense = [None, 2, 2, 3, 4, None], {2: 1.5, 3: -0.5}  # line 4: not scored
    assert token_advantages(0.7, lines, dense, 0.0) == [0.7] * 6
    got = token_advantages(0.7, lines, dense, W)
    assert got == [0.7, 0.7 + W * 1.5, 0.7 + W * 1.5, 0.7 - W * 0.5, 0.7, 0.7]


def _lines_by_counting(program: str, offset: int, ends: list[int], span: tuple[int, int]) -> list[int | None]:
    """Each token's program line by counting newlines before its last character (the mapping, computed apart)."""
    out = []
    for end in ends:
        c = end - 1 + offset
        out.append(program[:c].count("\n") + 1 if span[0] <= end - 1 < span[1] and 0 <= c < len(program) else None)
    return out


def test_tokens_map_to_the_program_line_they_end_on(tokenizer):
    task = Task("t/0", 'def f(x):\n    """Add one."""\n', AssertTests(("assert f(1) == 2",)), prompt_style="completion")
    prompt = task.prompt.rstrip()
    completion = "\n    y = x + 1\n    return y\n\ndef g():\n    pass\n"
    ids = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    text, ends = completion_ends(tokenizer, ids)
    assert text == completion and len(ends) == len(ids) - 1  # up to the end-of-text token
    program, lines = completion_lines(task, prompt, text, ends)
    assert program == program_for(task, prompt, completion) == prompt + "\n    y = x + 1\n    return y\n"
    stop = completion.index("\ndef g")
    assert lines == _lines_by_counting(program, len(prompt), ends, (0, stop))
    pieces = [tokenizer.decode(ids[: j + 1])[len(tokenizer.decode(ids[:j])) :] for j in range(len(ends))]
    by_piece = dict(zip(pieces, lines, strict=True))
    assert by_piece[" return"] == 4 and by_piece["1"] == 3 and by_piece[" pass"] is None  # `def g`: past the stop
    assert lines[0] == 3 and set(lines) == {3, 4, None}  # "\n   " spans a line break: the line it ends in

    # sampled tokens need not be the tokenizer's own split of their text: ends from what was sampled
    split = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t))[0] for t in ("\n    ", "return")]
    assert tokenizer("\n    return", add_special_tokens=False).input_ids != split
    assert completion_ends(tokenizer, split) == ("\n    return", [5, 11])

    chat = Task("t/1", "Write f.", AssertTests(("assert f(1) == 1",)))
    answer = "Here it is:\n```python\ndef f(x):\n    return x\n```\nDone."
    ids = tokenizer(answer, add_special_tokens=False).input_ids
    text, ends = completion_ends(tokenizer, ids)
    program, lines = completion_lines(chat, "PROMPT", text, ends)
    assert program == "def f(x):\n    return x\n"
    start = answer.index("def")
    assert lines == _lines_by_counting(program, -start, ends, (start, start + len(program) - 1))
    assert lines[0] is None and lines[-1] is None and {1, 2} <= set(lines)  # prose and fences are on no line


def test_a_prm_weight_needs_a_trained_prm(tmp_path):
    from pper.rl.grpo import check_rl

    config = validate_config({"rl": {"prm_weight": 0.5}})
    with pytest.raises(PperError, match="no trained PRM at .*prm.model"):
        check_rl(config, tmp_path)
    assert check_rl(validate_config({}), tmp_path) is None  # w = 0: no PRM looked for
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "prm.json").write_text("{}")
    assert check_rl(validate_config({"rl": {"prm_weight": 0.5}, "prm": {"model": str(tmp_path / "p")}}), tmp_path) == (
        tmp_path / "p"
    )
    with pytest.raises(PperError, match="multi-turn"):
        check_rl(validate_config({"rl": {"prm_weight": 0.5, "turns": 2}}), tmp_path)
    with pytest.raises(PperError):
        validate_config({"rl": {"prm_weight": 1.5}})


def _prm(path=None):
    """An untrained PRM (random head) on the default model; with `path`, saved there as `pper prm train` leaves one."""
    import torch

    from pper.generation import load_model
    from pper.prm.model import PRM

    torch.manual_seed(0)
    model, tokenizer, _ = load_model("default")
    prm = PRM(model, tokenizer)
    if path is not None:
        prm.save(path, {"id": "test@0", "base_model": "default", "dtype": "float32"})
    return prm


def _length_reward(completions, **kwargs):
    """A reward that differs within groups: the completion's length in characters, mod 5."""
    return [float(len(c) % 5) for c in completions]


def _expected(trainer, prm, out, rows, outcome):
    """A_i + w * D per token of each row of the batch `out`, computed apart from `pper.rl.dense` (prefix decodes,
    newline counts, numpy's sample std) from the PRM's scores; and how many tokens carry a dense term."""
    from pper.prm.model import line_input

    tok, g = trainer.processing_class, trainer.num_generations
    special = set(tok.all_special_ids)
    per_row = []
    for i, (task_id, prompt) in enumerate(rows):
        task = trainer.prm_tasks[task_id]
        ids = out["completion_ids"][i][: int(out["completion_mask"][i].sum())].tolist()
        ids = ids[: next((j for j, t in enumerate(ids) if t in special), len(ids))]
        text = tok.decode(ids)
        program = program_for(task, prompt, text)
        scores = prm.scores(line_input(task, program, prm.tokenizer))
        lines = []
        for j in range(len(ids)):
            c = len(prompt) + len(tok.decode(ids[: j + 1])) - 1  # a completion task: program = prompt + completion
            lines.append(program[:c].count("\n") + 1 if c < len(program) else None)
        per_row.append((scores, lines))
    rows_out, dense_tokens = [], 0
    for start in range(0, len(rows), g):
        group = per_row[start : start + g]
        values = np.array([s for scores, _ in group for s in scores.values()])
        sd = values.std(ddof=1) if len(values) >= 2 else 0.0
        for k, (scores, lines) in enumerate(group):
            a = float(outcome[start + k])
            row = [a] * out["completion_ids"].size(1)
            for j, line in enumerate(lines):
                if line in scores and sd > 0:
                    row[j] = a + trainer.prm_weight * (scores[line] - values.mean()) / (sd + EPS)
                    dense_tokens += 1
            rows_out.append(row)
    return rows_out, dense_tokens


def test_the_loss_receives_per_token_advantages_a_i_plus_w_d(tmp_path):
    trl = pytest.importorskip("trl")
    import torch

    from pper.rl.dense import trainer_class

    prm = _prm()
    setup = tiny_grpo(tmp_path, completion_length=24, steps=2)
    generated, trl_advantages, losses = [], [], []
    weights = [W, 0.0]  # the first step with the PRM's term, the second without

    class TRLCapture(trl.GRPOTrainer):  # below the dense hook: TRL's own (outcome) advantages
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            trl_advantages.append(out["advantages"].clone())
            return out

    class Capture(trainer_class(TRLCapture)):
        def _generate_and_score_completions(self, inputs):
            self.prm_weight = weights[len(generated)]
            out = super()._generate_and_score_completions(inputs)
            generated.append(({k: v.clone() if torch.is_tensor(v) else v for k, v in out.items()},
                              [(x["task_id"], x["prompt"]) for x in inputs], self.prm_weight))  # fmt: skip
            return out

        def _compute_loss(self, model, inputs):
            losses.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
            return super()._compute_loss(model, inputs)

    trainer = Capture(model=setup.model, reward_funcs=_length_reward, args=setup.config, train_dataset=setup.data,
                      processing_class=setup.tokenizer, prm=prm, prm_weight=W,
                      tasks={t.id: t for t in setup.tasks})  # fmt: skip
    trainer.train()
    assert len(generated) == len(losses) == 2

    def rows(batch):  # completion ids -> advantages (the loss gets the generated rows shuffled)
        return {tuple(batch["completion_ids"][i].tolist()): batch["advantages"][i] for i in range(4)}

    (out, inputs, w), loss = generated[0], losses[0]
    assert w == W and out["advantages"].shape == out["completion_ids"].shape  # per token: (B, T)
    assert loss["advantages"].shape == loss["completion_ids"].shape
    trainer.prm_weight = W
    expected, dense_tokens = _expected(trainer, prm, out, inputs, trl_advantages[0])
    assert dense_tokens > 0  # the PRM's term is there on some tokens
    assert torch.allclose(out["advantages"], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    got = rows(loss)
    for key, value in rows(out).items():
        assert torch.equal(got[key], value)
    # w = 0: TRL's advantages, one per completion, untouched
    (out, _, w), loss = generated[1], losses[1]
    assert w == 0.0 and out["advantages"].dim() == 1 and torch.equal(out["advantages"], trl_advantages[1])
    assert loss["advantages"].dim() == 1
    assert sorted(loss["advantages"].tolist()) == sorted(trl_advantages[1].tolist())
    logged = [h for h in trainer.state.log_history if "prm/dense" in h]
    assert logged and logged[0]["prm/dense"] > 0 and "reward" in logged[0]  # next to the reward in the log


@pytest.mark.slow
def test_group_replay_and_the_prm_term_compose(tmp_path):
    pytest.importorskip("trl")
    import torch

    from pper.buffer import ReplayBuffer
    from pper.rl.config import GroupReplayConfig
    from pper.rl.dense import trainer_class
    from pper.rl.replay import trainer_class as replay_class

    prm = _prm()
    setup = tiny_grpo(tmp_path, completion_length=16, steps=3)
    outcome, generated = [], []

    class ReplayCapture(replay_class()):  # below the dense hook: the replaying trainer's advantages and rows
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            outcome.append((out["advantages"].clone(), list(self.batch_rows)))
            return out

    class Capture(trainer_class(ReplayCapture)):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            generated.append({k: v.clone() if torch.is_tensor(v) else v for k, v in out.items()})
            return out

    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks(setup.tasks)
        trainer = Capture(model=setup.model, reward_funcs=_length_reward, args=setup.config, train_dataset=setup.data,
                          processing_class=setup.tokenizer, buffer=buffer, replay=GroupReplayConfig(fraction=0.5),
                          task_ids=setup.task_ids, prm=prm, prm_weight=W,
                          tasks={t.id: t for t in setup.tasks})  # fmt: skip
        trainer.train()
    assert trainer.replayed_groups >= 1 and len(generated) == 3
    replayed_rows = 0
    for out, (advantages, rows) in zip(generated, outcome, strict=True):
        assert out["advantages"].shape == out["completion_ids"].shape
        expected, _ = _expected(trainer, prm, out, rows, advantages)
        assert torch.allclose(out["advantages"], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
        old = out.get("old_per_token_logps")
        replayed_rows += 0 if old is None else sum(not torch.isnan(old[i]).any() for i in range(4))
    assert replayed_rows >= 2  # replayed groups got their dense term too


@pytest.mark.slow
def test_pper_rl_with_a_prm_weight_logs_the_dense_term(tmp_path):
    pytest.importorskip("trl")
    import json
    import subprocess
    import sys

    import yaml

    _prm(tmp_path / "prm")
    config = {
        "runs_dir": str(tmp_path / "runs"),
        "tasks": {"source": "humaneval", "limit": 4, "holdout": 0.5, "validation": 0},
        "generation": {"max_new_tokens": 16},
        "evaluation": {"before": False},
        "execution": {"workers": 1},
        "rl": {"steps": 2, "group_size": 2, "prompts_per_step": 2, "max_completion_length": 16, "save_steps": 1,
               "prm_weight": W, "replay": {"fraction": 0.5}},
        "prm": {"model": str(tmp_path / "prm")},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "pper", "rl", "--config", str(path), "--name", "dense"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (tmp_path / "runs" / "dense" / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e.get("event") == "rl_step"]
    assert len(steps) == 2 and all("prm/dense" in s and "reward" in s for s in steps)
    missing = dict(config, prm={"model": str(tmp_path / "none")})
    path.write_text(yaml.safe_dump(missing))
    refused = subprocess.run([sys.executable, "-m", "pper", "rl", "--config", str(path), "--name", "none"],
                             capture_output=True, text=True, timeout=900)  # fmt: skip
    assert refused.returncode != 0 and "no trained PRM at" in refused.stderr
