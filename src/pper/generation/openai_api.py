"""Teacher models behind an OpenAI-compatible API (OpenAI, vLLM, llama.cpp, ...): the paper's "better
models help fine-tune normal models" setting.

Code-completion tasks go to `/v1/completions`, instruction tasks to `/v1/chat/completions`; both are asked
for log-probabilities, which P(t) needs, and a server that returns none is an error. k samples are k
requests, `concurrency` at a time. The official client retries connection errors, timeouts, 429 and 5xx
with exponential backoff (`max_retries`); what still fails becomes one clear error. APIs have no beam
search, so `beam` mode is refused.

Greedy (temperature 0) and reproducibility. A greedy request has temperature 0, n = 1 and the sampler's seed,
and greedy requests go **one at a time, in task order**: a server sees the same sequence of requests on every
run and never batches two of pper's greedy requests together. That is all a client can fix; whether the same
request gives the same completion is the server's arithmetic. Servers reuse the cached prompt prefix of an
earlier request (llama.cpp's prompt cache, vLLM's prefix caching) and batch concurrent requests, and a prompt
evaluated whole, in pieces or beside other requests is the same sums added in another order: the logits
differ in the last bits and a near-tie flips a greedy token, so the completion can depend on what the server
did before. Greedy is reproducible where the server makes each request's arithmetic independent of the
others, e.g. llama.cpp evaluating prompts one token at a time (`python -m llama_cpp.server --n_batch 1`, as
the tests run it; `llama-server -b 1 -ub 1`, not tested here); for other servers see their documentation on
deterministic inference (llama-server's per-request `cache_prompt`, vLLM's batch-invariant mode). Sampling
keeps `concurrency` requests in flight.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import PperError
from ..tasks import Task
from .prompts import Prompt, build_prompt, extract_program, instruction, program_token_range, stop_index
from .sampler import Candidate, Mode

MAX_API_STOPS = 4  # the OpenAI API takes at most four stop sequences; the rest are applied here


class OpenAISampler:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        max_retries: int = 5,
        max_new_tokens: int = 300,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = 0,
    ):
        import openai

        self.base_url, self.model = base_url, model
        self.name = f"api:{model}"
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
            timeout=timeout,
            max_retries=max_retries,
        )
        self.concurrency, self.max_new_tokens = concurrency, max_new_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed

    def sample(
        self,
        tasks: Sequence[Task],
        mode: Mode,
        k: int,
        prefixes: Mapping[str, str] | None = None,
        prefill_stops: bool = True,
    ) -> Iterator[tuple[Task, list[Candidate]]]:
        prefixes = prefixes or {}
        for t in tasks:
            if prefixes.get(t.id) and t.prompt_style != "completion":
                raise PperError(
                    f"{t.id}: a teacher behind the chat API cannot continue a prefilled answer, so it cannot sample "
                    "curriculum stages of instruction tasks; sample them with the local model"
                )
        prompts = [build_prompt(t, prefix=prefixes.get(t.id, ""), prefill_stops=prefill_stops) for t in tasks]
        for i, candidates in self.sample_prompts(prompts, mode, k):
            yield tasks[i], candidates

    def sample_prompts(self, prompts: Sequence[Prompt], mode: Mode, k: int) -> Iterator[tuple[int, list[Candidate]]]:
        """Candidates for prompts already built, in order: (index of the prompt, its candidates). A repair turn's
        prompt (`Prompt.messages`) goes to the chat endpoint as its messages."""
        if mode == "beam":
            raise PperError(
                "an OpenAI-compatible API offers no beam search: use --mode sample or greedy with a teacher"
            )
        greedy = mode == "greedy"
        n = 1 if greedy else k
        temperature = 0.0 if greedy else self.temperature
        # greedy: one request at a time, in task order (the module's docstring says why)
        pool = ThreadPoolExecutor(max_workers=1 if greedy else self.concurrency)
        try:
            futures = [[pool.submit(self._one, p, temperature, i) for i in range(n)] for p in prompts]
            for index, pending in enumerate(futures):
                candidates = [f.result() for f in pending]
                # every sample stays, equal ones too (pass@k counts them), as the local sampler keeps them
                yield index, [c for c in candidates if c is not None and c.num_tokens]
        finally:  # an error, Ctrl-C or a caller that stops reading: the queued requests are not sent
            pool.shutdown(wait=False, cancel_futures=True)

    def _one(self, prompt: Prompt, temperature: float, i: int) -> Candidate | None:
        import openai

        task = prompt.task
        seed = None if self.seed is None else self.seed + i
        common = {
            "model": self.model,
            "max_tokens": self.max_new_tokens,
            "temperature": temperature,
            "top_p": self.top_p,
            "seed": seed,
        }
        try:
            if prompt.continues:
                response = self.client.completions.create(
                    prompt=prompt.text, stop=list(prompt.stops[:MAX_API_STOPS]) or None, logprobs=1, **common
                )
                choice = response.choices[0]
                if choice.logprobs is None or not choice.logprobs.tokens:
                    self._no_logprobs("completions")
                tokens, logprobs = choice.logprobs.tokens, choice.logprobs.token_logprobs
            else:
                response = self.client.chat.completions.create(
                    messages=list(prompt.messages) or [{"role": "user", "content": instruction(task)}],
                    logprobs=True,
                    top_logprobs=1,
                    **common,
                )
                choice = response.choices[0]
                if choice.logprobs is None or not choice.logprobs.content:
                    self._no_logprobs("chat/completions")
                tokens = [t.token for t in choice.logprobs.content]
                logprobs = [t.logprob for t in choice.logprobs.content]
        except openai.APITimeoutError:
            raise PperError(
                f"the API server at {self.base_url} did not answer within {self.client.timeout} s, "
                f"{self.client.max_retries + 1} times: is it overloaded? (raise the timeout or lower the concurrency)"
            ) from None
        except openai.APIConnectionError as e:
            raise PperError(f"cannot reach the API server at {self.base_url} ({e}); is it running?") from None
        except openai.APIStatusError as e:
            raise PperError(f"the API server at {self.base_url} answered {e.status_code}: {e.message}") from None
        return self._candidate(prompt, tokens, logprobs)

    def _candidate(self, prompt: Prompt, tokens: Sequence[str], logprobs: Sequence[float | None]) -> Candidate | None:
        """The candidate of a reply given as its tokens' texts and log-probabilities: the text cut at the first
        stop string (a token running across it is kept up to it and counts), and P(t) summed over the program's
        own tokens among those kept (`prompts.program_token_range`: the code of a chat answer, without the prose
        and fences around it, as the local sampler counts), leaving out tokens the server gave no log-probability."""
        text = "".join(tokens)
        cut = stop_index(text, prompt.stops) if prompt.stops else None
        text = text if cut is None else text[:cut]
        ends = list(itertools.accumulate(len(t) for t in tokens))
        kept = bisect.bisect_left(ends, len(text)) + 1 if text else 0  # tokens up to the one holding the last char
        lo, hi = program_token_range(prompt, text, [min(e, len(text)) for e in ends[:kept]])
        counted = [lp for lp in logprobs[lo:hi] if lp is not None]
        if not counted:
            return None
        program = extract_program(prompt, text)
        return Candidate(prompt.task.id, program, text, float(sum(counted)), len(counted), self.name,
                         prefix=prompt.prefix)  # fmt: skip

    def _no_logprobs(self, endpoint: str) -> Any:
        raise PperError(
            f"the API server at {self.base_url} returned no logprobs from /v1/{endpoint} for model {self.model!r}: "
            "pper needs them for P(program); use a server that supports logprobs (OpenAI completions, vLLM, "
            "llama.cpp)"
        )
