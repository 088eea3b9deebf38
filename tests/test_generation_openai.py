"""The OpenAI-compatible back-end against a real llama.cpp server on loopback, through the official client."""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path

import pytest

from pper.errors import PperError
from pper.generation.models import embedded_gguf
from pper.generation.openai_api import OpenAISampler
from pper.generation.prompts import COMPLETION_STOPS, build_prompt, build_repair_prompt, code_from_answer
from pper.tasks import load_tasks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """A llama.cpp server on loopback. `--n_batch 1`: it evaluates every prompt token alone, as it does a
    generated one, so what a request gets never depends on which prompt prefix an earlier request left in its
    cache (the reproducible set-up that pper.generation.openai_api's docstring names). llama.cpp computes a token
    alone and within a batch with different kernels (the logits after HumanEval/0's prompt differ by up to 0.84),
    and with batched prompts issue 13 saw the same greedy request return another completion after other requests.
    One-token batches also keep llama.cpp out of its AMX matrix kernel, which kills the server at the first prompt
    on some Xeons (ggml-org/llama.cpp#20824)."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python[server] (installed by the dev group)")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(embedded_gguf()),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_batch",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited at start ({proc.returncode}); its log:\n{_tail(log_path)}")
            if time.time() > deadline:
                proc.kill()
                pytest.fail(f"llama_cpp.server did not answer within 120 s; its log:\n{_tail(log_path)}")
            time.sleep(0.5)
    yield url
    died = proc.poll()
    proc.terminate()
    proc.wait(timeout=30)
    if died is not None:
        pytest.fail(f"llama_cpp.server died during the tests ({died}); its log:\n{_tail(log_path)}")


def test_completion_tasks_get_programs_with_logprobs(llama_server):
    tasks = load_tasks("humaneval", limit=2)
    sampler = OpenAISampler(llama_server, "smollm2", max_new_tokens=64, concurrency=2)
    results = list(sampler.sample(tasks, "sample", 2))
    assert [t.id for t, _ in results] == [t.id for t in tasks]
    for task, candidates in results:
        assert 1 <= len(candidates) <= 2
        prompt = build_prompt(task)
        for c in candidates:
            assert c.model == "api:smollm2" and 1 <= c.num_tokens <= 64 and c.logprob < 0
            assert not any(stop in c.completion for stop in COMPLETION_STOPS)
            assert c.program.startswith(prompt.text)
    greedy = {t.id: cs for t, cs in sampler.sample(tasks, "greedy", 5)}
    assert all(len(cs) == 1 for cs in greedy.values())
    # the same requests in the other order, each after another prompt than before: on this server (one-token
    # prompt batches) the same greedy request gives the same tokens and the same log-probabilities, bit for bit
    again = {t.id: cs for t, cs in sampler.sample(tasks[::-1], "greedy", 1)}
    assert {i: (c[0].completion, c[0].logprob) for i, c in greedy.items()} == {
        i: (c[0].completion, c[0].logprob) for i, c in again.items()
    }


def test_instruction_tasks_use_the_chat_endpoint(llama_server, mbpp_path):
    task = load_tasks(f"mbpp:{mbpp_path}", split="test", limit=1)[0]
    sampler = OpenAISampler(llama_server, "smollm2", max_new_tokens=96)
    [(_, [candidate])] = list(sampler.sample([task], "greedy", 1))
    assert candidate.logprob < 0 and candidate.num_tokens >= 1 and "```" not in candidate.program


def test_a_teacher_answers_a_repair_turn_as_a_chat(llama_server):
    """A repair turn of a completion task goes to the chat endpoint with its messages, and the program is the code of
    the answer (no completion stop strings)."""
    task = load_tasks("humaneval", limit=1)[0]
    feedback = "The program failed this test:\nassert has_close_elements([1.0, 2.0, 3.0], 0.5) == False"
    prompt = build_repair_prompt(task, [(task.prompt + "    return True\n", feedback)])
    sampler = OpenAISampler(llama_server, "smollm2", max_new_tokens=96)
    [(index, [candidate])] = list(sampler.sample_prompts([prompt], "greedy", 1))
    assert index == 0 and candidate.logprob < 0 and candidate.num_tokens >= 1
    assert "```" not in candidate.program and candidate.program.strip()
    assert candidate.program == code_from_answer(candidate.completion)  # the answer's code, not a continuation


def test_beam_search_is_refused(llama_server):
    sampler = OpenAISampler(llama_server, "smollm2")
    with pytest.raises(PperError, match="no beam search: use --mode sample or greedy"):
        list(sampler.sample(load_tasks("humaneval", limit=1), "beam", 3))


def _reply_json(handler, status: int, body) -> None:
    """Answer an http.server request with `body` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Scripted(BaseHTTPRequestHandler):
    """A loopback server answering /v1/completions from a script of (status, body) pairs."""

    script: list = []
    seen = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = _Scripted.script[min(_Scripted.seen, len(_Scripted.script) - 1)]
        _Scripted.seen += 1
        _reply_json(self, status, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = HTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Scripted.seen = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _completion(logprobs):
    choice = {"index": 0, "text": "\n    return 1", "finish_reason": "stop", "logprobs": logprobs}
    return {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [choice]}


def test_retries_on_429_then_succeeds(scripted):
    ok = _completion(
        {
            "tokens": ["\n   ", " return", " 1"],
            "token_logprobs": [-0.5, -0.25, -0.25],
            "top_logprobs": None,
            "text_offset": [0, 4, 11],
        }
    )
    _Scripted.script = [
        (429, {"error": {"message": "slow down"}}),
        (429, {"error": {"message": "slow down"}}),
        (200, ok),
    ]
    sampler = OpenAISampler(scripted, "m", max_retries=3)
    [(_, [candidate])] = list(sampler.sample(load_tasks("humaneval", limit=1), "greedy", 1))
    assert _Scripted.seen == 3 and candidate.logprob == pytest.approx(-1.0) and candidate.num_tokens == 3


def test_a_server_without_logprobs_is_a_clear_error(scripted):
    _Scripted.script = [(200, _completion(None))]
    with pytest.raises(PperError, match="returned no logprobs"):
        list(OpenAISampler(scripted, "m").sample(load_tasks("humaneval", limit=1), "greedy", 1))


def test_a_dead_or_failing_server_is_a_clear_error(scripted):
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(PperError, match="cannot reach the API server"):
        list(OpenAISampler(dead, "m", max_retries=0, timeout=5).sample(load_tasks("humaneval", limit=1), "greedy", 1))
    _Scripted.script = [(500, {"error": {"message": "boom"}})]
    with pytest.raises(PperError, match="answered 500"):
        list(OpenAISampler(scripted, "m", max_retries=1).sample(load_tasks("humaneval", limit=1), "greedy", 1))


class _Overlap(BaseHTTPRequestHandler):
    """A threaded loopback server for /v1/completions that holds each request until another one is in flight, the
    `expect`-th has arrived or `hold` seconds pass, and records the request bodies in arrival order and the most
    requests in flight at once."""

    cond = threading.Condition()
    hold, expect, in_flight, peak = 0.0, 0, 0, 0
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = _Overlap
        with cls.cond:
            cls.bodies.append(body)
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
            cls.cond.notify_all()
            cls.cond.wait_for(lambda: cls.in_flight > 1 or len(cls.bodies) >= cls.expect, timeout=cls.hold)
            cls.in_flight -= 1  # before answering: a client that waits for the answer never overlaps
        _reply_json(self, 200, _completion({"tokens": [" 1"], "token_logprobs": [-0.5], "top_logprobs": None}))

    def log_message(self, *args):
        pass


@pytest.fixture
def overlap():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Overlap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_greedy_requests_are_temperature_0_and_go_one_at_a_time_in_task_order(overlap):
    tasks = load_tasks("humaneval", limit=3)
    sampler = OpenAISampler(overlap, "m", concurrency=3)
    # a client sending greedy requests concurrently would have a second one in flight while the first is held
    _Overlap.hold, _Overlap.expect, _Overlap.peak, _Overlap.bodies = 0.3, 3, 0, []
    assert [t.id for t, _ in sampler.sample(tasks, "greedy", 1)] == [t.id for t in tasks]
    assert _Overlap.peak == 1 and [b["prompt"] for b in _Overlap.bodies] == [build_prompt(t).text for t in tasks]
    assert all(b["temperature"] == 0 and b["seed"] == 0 and b.get("n", 1) == 1 for b in _Overlap.bodies)
    # sampling keeps up to `concurrency` requests in flight: a held request waits for the next one
    _Overlap.hold, _Overlap.expect, _Overlap.peak, _Overlap.bodies = 30.0, 6, 0, []
    assert len(list(sampler.sample(tasks[:2], "sample", 3))) == 2
    assert 2 <= _Overlap.peak <= 3 and len(_Overlap.bodies) == 6


@pytest.mark.slow  # 150 s on 2 loaded cores: every probe is a chat request of up to 64 tokens
def test_a_teacher_completes_the_prefixes_of_prm_probes_in_a_chat(llama_server, mbpp_path, tmp_path):
    """`prm.completer: teacher`: an instruction task's prefix cannot be prefilled over a chat API (the sampler refuses
    it), so each probe asks for the program's continuation in a chat; the search ends within its probe bound."""
    from pper.buffer import Execution, NewProgram, ReplayBuffer
    from pper.execution import Executor
    from pper.generation.prompts import continuation_prompt
    from pper.prm.config import PrmConfig
    from pper.prm.label import label_program
    from pper.prm.search import max_probes

    task = load_tasks(f"mbpp:{mbpp_path}", split="test", limit=1)[0]
    lines = task.solutions[0].splitlines()
    wrong = "\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) - len(lines[-1].lstrip())] + "return None"]) + "\n"
    sampler = OpenAISampler(llama_server, "smollm2", max_new_tokens=64, temperature=0.8, seed=0)
    with pytest.raises(PperError, match="cannot continue a prefilled answer"):
        list(sampler.sample([task], "sample", 1, prefixes={task.id: lines[0]}))
    prompt = continuation_prompt(task, lines[0])
    assert prompt.messages[-1]["content"].endswith(f"```python\n{lines[0]}\n```") and not prompt.continues
    with ReplayBuffer(tmp_path / "b.sqlite") as buffer, Executor(workers=1) as executor:
        buffer.add_tasks([task])
        (pid,) = buffer.add_programs([NewProgram(task.id, wrong, -1.0, 5, "m")])
        buffer.add_executions([Execution(pid, executor.run(task, wrong))])
        program = buffer.program(pid)
        assert not program.result.all_passed
        probes = []
        search = label_program(task, program, executor, PrmConfig(completer="teacher", completions=1), sampler,
                               lambda: probes.append(1))  # fmt: skip
    assert search.completer == "teacher" and search.completions == 1
    assert len(search.labels) == len(wrong.splitlines()) and 1 <= len(probes) <= max_probes(len(search.labels))


def _chat(tokens, logprobs):
    pairs = zip(tokens, logprobs, strict=True)
    content = [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []} for t, lp in pairs]
    message = {"role": "assistant", "content": "".join(tokens)}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": {"content": content}}
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}


def test_a_teachers_chat_answer_counts_only_its_codes_tokens_in_p_t(scripted):
    import dataclasses

    task = dataclasses.replace(load_tasks("humaneval", limit=1)[0], prompt_style="instruction")
    tokens = ["Sure", ":\n", "```python\n", "def", " f", "():", " return", " 1", "\n```", "\nHope", " it helps"]
    logprobs = [-3.0, -2.0, -1.0, -0.25, -0.25, -0.25, -0.125, -0.125, -1.0, -2.0, -4.0]
    _Scripted.script = [(200, _chat(tokens, logprobs))]
    [(_, [candidate])] = list(OpenAISampler(scripted, "m").sample([task], "greedy", 1))
    assert candidate.program == "def f(): return 1\n"
    assert (candidate.logprob, candidate.num_tokens) == (-1.0, 5)  # "def" .. " 1": was -14.0 over all 11 tokens


def test_a_teachers_token_running_across_the_stop_keeps_its_code(scripted):
    tokens = ["\n    return sorted", "(numbers", ")\n\n\n", "def", " helper", "(y"]  # Qwen2-style ")\n\n\n"
    _Scripted.script = [(200, _completion({"tokens": tokens, "token_logprobs": [-0.5] * 6, "top_logprobs": None}))]
    task = load_tasks("humaneval", limit=1)[0]
    [(_, [candidate])] = list(OpenAISampler(scripted, "m").sample([task], "greedy", 1))
    assert candidate.completion == "\n    return sorted(numbers)\n\n"  # was "...sorted(numbers": a syntax error
    assert candidate.program.endswith("return sorted(numbers)\n") and candidate.num_tokens == 3


def test_a_failing_server_stops_the_sampling_at_once_not_after_every_queued_request(scripted):
    _Scripted.script = [(500, {"error": {"message": "boom"}})]
    tasks = load_tasks("humaneval", limit=20)
    with pytest.raises(PperError, match="answered 500"):
        list(OpenAISampler(scripted, "m", max_retries=0, concurrency=2).sample(tasks, "sample", 3))
    assert _Scripted.seen <= 6  # was all 60 requests: the queued ones were sent before the error came out
