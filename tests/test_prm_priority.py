"""`replay.prm_weight` in `pper run`: the run's PRM scores every tested program's lines before each round's
training, and a run without a trained PRM is refused before it samples."""

from __future__ import annotations

import json

import pytest

from pper.buffer import ReplayBuffer
from pper.config import load_config
from pper.errors import PperError
from pper.generation import load_model
from pper.pipeline import run
from pper.prm.model import PRM, line_input

OVERRIDES = {
    "tasks.source": "humaneval",
    "tasks.limit": 3,  # 3 training tasks, none held out or for validation
    "tasks.holdout": 0,
    "tasks.validation": 0,
    "generation.k": 2,
    "generation.max_new_tokens": 24,
    "execution.workers": 1,
    "training.steps": 1,
    "training.batch_size": 2,
    "rounds": 1,
    "replay.prm_weight": 0.5,
}


@pytest.mark.parametrize(
    "option", [{"replay.prm_weight": 0.5}, {"generation.rerank": "prm", "generation.candidates": 3}]
)
def test_a_run_without_a_trained_prm_is_refused_before_sampling(tmp_path, option):
    config = load_config(overrides={**OVERRIDES, "replay.prm_weight": 0.0, **option, "runs_dir": str(tmp_path),
                                    "name": "no-prm"})  # fmt: skip
    with pytest.raises(PperError, match="no trained PRM at .*prm.*pper prm train"):
        run(config, show_progress=False)
    with ReplayBuffer(tmp_path / "no-prm" / "buffer.sqlite") as buffer:
        assert buffer.programs() == []


def test_each_round_scores_the_new_programs_with_the_runs_prm_before_training(tmp_path):
    model, tokenizer, _ = load_model("smollm2-135m-instruct")
    prm = PRM(model, tokenizer)  # an untrained head is a PRM all the same: the claim is where its scores go
    prm.save(tmp_path / "prm", {"id": "test-prm", "base_model": "smollm2-135m-instruct", "dtype": "float32"})
    overrides = {**OVERRIDES, "runs_dir": str(tmp_path), "name": "scored", "prm.model": str(tmp_path / "prm")}
    done = run(load_config(overrides=overrides), show_progress=False)
    with ReplayBuffer(done.dir / "buffer.sqlite") as buffer:
        programs = buffer.programs()
        scores = buffer.prm_scores()["test-prm"]
        tasks = {t.id: t for t in buffer.tasks()}
    assert programs and set(scores) == {p.id for p in programs}
    p = programs[0]  # the stored scores are the PRM's own, line for line
    expected = prm.scores(line_input(tasks[p.task_id], p.text, tokenizer, 2048))
    assert scores[p.id].keys() == expected.keys()
    assert all(abs(scores[p.id][k] - expected[k]) < 1e-5 for k in expected)
    events = [json.loads(line) for line in (done.dir / "events.jsonl").read_text().splitlines()]
    names = [e.get("phase") for e in events if e.get("event") == "start"]
    assert names.index("prm") < names.index("training")
    logged = next(e for e in events if e.get("event") == "prm_scores")
    assert logged["programs"] == len(programs) and logged["prm"] == "test-prm"
