"""Sampling fan-out on Ray: `replicas` copies of the model, each a pper `TransformersSampler` in a Ray actor,
sharing the tasks of a round (`generation.backend: ray`, `generation.replicas`).

The model in the driver's memory (the base model, or the round's trained weights) is put once into Ray's object
store and every replica loads it from there, so nodes need no shared filesystem. Tasks go to replicas in chunks
of `generation.batch_size` (one chunk per replica at a time); a chunk's candidates come back whole and
`RaySampler.sample` yields them task by task, so the driver commits each task as the local sampler does (a
killed run resumes with the tasks it had not committed).

A replica that dies (its process killed, its node lost) fails the chunk it held: the chunk goes back to the
front of the queue for a live replica, and Ray restarts the dead one from the same object; one that does not
answer within `RESTART_TIMEOUT` is given up for good. A task is yielded once: no task is committed twice. A
chunk is sent at most `MAX_TRIES` times; when no replica is left (the cluster is gone) sampling raises
`PperError`, and the run resumes later from what it committed. Each phase closes its sampler (`close`), which
frees the replicas' CPUs, GPUs and weights.

A replica computes what a local `TransformersSampler` computes on the same chunk. In `sample` mode the
candidates also depend on which replica drew which chunk (each seeds its generator with the run's seed plus
its index). Chunks are batches of their own, so even `beam` and `greedy` can differ from one local sampler
over all tasks where batch padding's rounding turns a near tie.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..cluster import connect, ray_module, reason
from ..errors import PperError
from ..tasks import Task
from .prompts import Prompt
from .sampler import Candidate, Mode

MAX_TRIES = 3  # times a chunk is sent before sampling gives up
WAIT = 1.0  # seconds between looks at the replicas while none answers
RESTART_TIMEOUT = 600.0  # seconds a replica Ray restarts may take to answer before it is given up


class SamplerReplica:
    """A Ray actor (made with `ray.remote` when `RaySampler` starts): a `TransformersSampler` on its model."""

    def __init__(self, weights: Any, tokenizer: Any, name: str, settings: dict[str, Any], seed: int):
        import ray
        from transformers import AutoModelForCausalLM

        from .hf import TransformersSampler

        config, state = weights
        model = AutoModelForCausalLM.from_config(config, dtype=next(iter(state.values())).dtype)
        model.load_state_dict(state, assign=True)
        model.tie_weights()
        if ray.get_gpu_ids():
            model = model.to("cuda")
        self.sampler = TransformersSampler(model.eval(), tokenizer, name, seed=seed, **settings)

    def info(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname()}

    def sample(
        self, tasks: list[Task], mode: Mode, k: int, prefixes: dict[str, str], prefill_stops: bool = True
    ) -> list[tuple[str, list[Candidate]]]:
        found = self.sampler.sample(tasks, mode, k, prefixes=prefixes, prefill_stops=prefill_stops)
        return [(task.id, candidates) for task, candidates in found]

    def sample_prompts(self, prompts: list[Prompt], mode: Mode, k: int) -> list[tuple[int, list[Candidate]]]:
        return list(self.sampler.sample_prompts(prompts, mode, k))


class RaySampler:
    """The `Sampler` protocol over `replicas` `SamplerReplica` actors (see the module's docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        config: Any,  # a GenerationConfig
        seed: int = 0,
        address: str | None = None,
    ):
        self.name = name
        self.chunk = config.batch_size
        self._ray = ray_module()
        self._started_ray = connect(address)
        self.resent = 0  # tasks or prompts sent again after the replica holding them died
        self._dead: set[int] = set()  # replicas given up (they did not come back), across calls
        settings = {
            "batch_size": config.batch_size,
            "max_new_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
        }
        ray = self._ray
        # the weights travel as CPU tensors with the model's config (a CUDA model would not unpickle on a CPU
        # replica); the references are held here for Ray's restarts of a replica
        weights = (model.config, {k: v.detach().to("cpu") for k, v in model.state_dict().items()})
        model_ref, tokenizer_ref = self._objects = ray.put(weights), ray.put(tokenizer)
        remote = ray.remote(SamplerReplica).options(
            num_cpus=config.replica_cpus, num_gpus=config.replica_gpus, max_restarts=-1, max_task_retries=0
        )
        self.replicas = [
            remote.remote(model_ref, tokenizer_ref, name, settings, seed + i) for i in range(config.replicas)
        ]
        try:
            self.info = ray.get([r.info.remote() for r in self.replicas], timeout=600)
        except Exception as e:
            self.close()
            raise PperError(f"a sampler replica did not start: {reason(e)}") from None

    def close(self) -> None:
        for replica in self.replicas:
            try:
                self._ray.kill(replica, no_restart=True)
            except Exception:  # already gone
                pass
        self.replicas = []
        self._objects = None  # the weights and tokenizer in the object store are freed with their last reference
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    def sample(
        self,
        tasks: Sequence[Task],
        mode: Mode,
        k: int,
        prefixes: Mapping[str, str] | None = None,
        prefill_stops: bool = True,
    ) -> Iterator[tuple[Task, list[Candidate]]]:
        by_id = {t.id: t for t in tasks}
        chunks = [list(tasks[i : i + self.chunk]) for i in range(0, len(tasks), self.chunk)]
        prefixes = dict(prefixes or {})

        def call(replica: Any, chunk: list[Task]) -> Any:
            given = {t.id: prefixes[t.id] for t in chunk if t.id in prefixes}
            return replica.sample.remote(chunk, mode, k, given, prefill_stops)

        for task_id, found in self._fan_out(chunks, call):
            yield by_id[task_id], found

    def sample_prompts(self, prompts: Sequence[Prompt], mode: Mode, k: int) -> Iterator[tuple[int, list[Candidate]]]:
        indexed = list(enumerate(prompts))
        chunks = [indexed[i : i + self.chunk] for i in range(0, len(indexed), self.chunk)]

        def call(replica: Any, chunk: list[tuple[int, Prompt]]) -> Any:
            return replica.sample_prompts.remote([p for _, p in chunk], mode, k)

        for offset_chunk, results in self._fan_out_chunks(chunks, call):
            for j, found in results:
                yield offset_chunk[j][0], found

    def _fan_out(self, chunks: list[list[Task]], call: Any) -> Iterator[tuple[str, list[Candidate]]]:
        for _, results in self._fan_out_chunks(chunks, call):
            yield from results

    def _fan_out_chunks(self, chunks: list[Any], call: Any) -> Iterator[tuple[Any, list[Any]]]:
        """(chunk, its results) as replicas finish them, one chunk per replica at a time; a chunk whose replica
        died goes back to the queue (see the module's docstring)."""
        ray = self._ray
        queue = deque((chunk, 0) for chunk in chunks)
        busy: dict[Any, tuple[int, Any, int]] = {}  # ref -> (replica index, chunk, tries)
        down: dict[Any, tuple[int, float]] = {}  # ping ref -> (replica restarting, when to give it up)
        idle = [r for r in range(len(self.replicas)) if r not in self._dead]
        while queue or busy:
            while idle and queue:
                r = idle.pop(0)
                chunk, tries = queue.popleft()
                busy[call(self.replicas[r], chunk)] = (r, chunk, tries + 1)
            if not busy and not down:
                raise PperError(f"no sampler replica is alive ({len(self._dead)} of {len(self.replicas)} gave up)")
            ready, _ = ray.wait([*busy, *down], num_returns=1, timeout=WAIT)
            now = time.monotonic()
            for ref in [ref for ref, (_, deadline) in down.items() if deadline < now and ref not in ready]:
                self._dead.add(down.pop(ref)[0])  # it did not come back in time
            for ref in ready:
                if ref in down:
                    r, _ = down.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(r)
                    except Exception:
                        self._dead.add(r)
                    continue
                r, chunk, tries = busy.pop(ref)
                try:
                    results = ray.get(ref)
                except Exception as e:
                    if tries >= MAX_TRIES:
                        raise PperError(f"sampling failed {tries} times on Ray replicas: {reason(e)}") from None
                    queue.appendleft((chunk, tries))
                    self.resent += len(chunk)
                    down[self.replicas[r].info.remote()] = (r, now + RESTART_TIMEOUT)  # Ray restarts it
                    continue
                idle.append(r)
                yield chunk, results
