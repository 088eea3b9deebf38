"""The transformers back-end: batched beam search, sampling and greedy decoding with exact log-probabilities.

Tasks are sorted by prompt length and run `batch_size` at a time with left padding, each prompt with its own
stop strings. Generation stops each beam at the end of its program (its stop strings, end of text, or any
special token), not at `max_new_tokens`. Each sequence is then cut at its stop string: the text ends where the
stop begins, and the tokens kept are those up to the one holding the text's last character (a token running
across the stop is kept). Its log-probability is the sum of the per-token log-probabilities of exactly the
program's own tokens among the tokens kept (`program_tokens`: all of them for completion tasks, the code
without prose and fences for instruction tasks), so the stored logP always belongs to the stored program (and
no step's full scores are kept). Beams that give the same program are one candidate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..tasks import Task
from .prompts import Prompt, build_prompt, extract_program, program_tokens, prompt_ids, stop_index
from .sampler import Candidate, Mode


def _grow_in_place(cache: Any) -> None:
    """Give every layer of a DynamicCache spare room: each step then writes its keys and values into the
    room instead of concatenating, which would copy the whole cache at every step."""
    from transformers.cache_utils import DynamicLayer

    class Growing(DynamicLayer):
        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n, t = self.keys.shape[-2], key_states.shape[-2]
            buffer = getattr(self, "_buffer", None)
            if buffer is None or buffer[0].data_ptr() != self.keys.data_ptr() or n + t > buffer[0].shape[-2]:
                # first step, rows selected by a new tensor, or no room left: copy into a buffer twice as long
                shape = (*self.keys.shape[:-2], 2 * (n + t), self.keys.shape[-1])
                buffer = (self.keys.new_empty(shape), self.values.new_empty(shape))
                buffer[0][..., :n, :] = self.keys
                buffer[1][..., :n, :] = self.values
                self._buffer = buffer
            buffer[0][..., n : n + t, :] = key_states
            buffer[1][..., n : n + t, :] = value_states
            self.keys, self.values = buffer[0][..., : n + t, :], buffer[1][..., : n + t, :]
            return self.keys, self.values

    for layer in cache.layers:
        layer.__class__ = Growing


def _select_rows(cache: Any, mask: Any, parents: list[int]) -> Any:
    """Make row i of the KV cache a copy of row parents[i]; returns the attention mask grown by one step.

    Copying a cache is the costly part of beam search: nothing is copied when every row keeps its own
    history, only the changed rows while the number of rows is the same, and everything only when tasks
    have finished and their rows go.
    """
    import torch

    with torch.inference_mode():  # the cache holds inference tensors
        return _select(cache, mask, parents)


def _select(cache: Any, mask: Any, parents: list[int]) -> Any:
    import torch

    n = mask.shape[0]
    if len(parents) == n:
        changed = [i for i, p in enumerate(parents) if p != i]
        if changed:
            dst = torch.tensor(changed, device=mask.device)
            src = torch.tensor([parents[i] for i in changed], device=mask.device)
            for layer in cache.layers:
                layer.keys[dst] = layer.keys[src]  # the right side is gathered first: overlaps are safe
                layer.values[dst] = layer.values[src]
            mask[dst] = mask[src]
    else:
        index = torch.tensor(parents, device=mask.device)
        cache.batch_select_indices(index)
        mask = mask[index]
    return torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)


def _top_p(probs, top_p: float):
    """`probs` with the tail beyond cumulative probability `top_p` set to zero (nucleus sampling)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(-1) - sorted_probs > top_p
    sorted_probs[drop] = 0.0
    return probs.zero_().scatter_(-1, order, sorted_probs)


def end_tokens(model: Any, tokenizer: Any) -> frozenset[int]:
    """The tokens that end a completion: the tokenizer's end of text, padding and other special tokens (a
    program's tokens end at the first special token, `prompts.program_tokens`, so nothing after one is code),
    and every end token the model's generation config lists (an instruct model may end its turn with one the
    tokenizer does not name, e.g. Qwen2.5's <|im_end|> and <|endoftext|>)."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, *(getattr(tokenizer, "all_special_ids", None) or ())}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return frozenset(i for i in ids if isinstance(i, int))


class TransformersSampler:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        batch_size: int = 8,
        max_new_tokens: int = 300,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int = 0,
    ):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.generated_tokens = 0  # tokens decoded by `generate`, for throughput figures
        self.end_tokens = end_tokens(model, tokenizer)

    def sample(
        self,
        tasks: Sequence[Task],
        mode: Mode,
        k: int,
        prefixes: Mapping[str, str] | None = None,
        prefill_stops: bool = True,
    ) -> Iterator[tuple[Task, list[Candidate]]]:
        prefixes = prefixes or {}
        prompts = [build_prompt(t, self.tokenizer, prefixes.get(t.id, ""), prefill_stops) for t in tasks]
        for i, candidates in self.sample_prompts(prompts, mode, k):
            yield prompts[i].task, candidates

    def sample_prompts(self, prompts: Sequence[Prompt], mode: Mode, k: int) -> Iterator[tuple[int, list[Candidate]]]:
        """Candidates for prompts already built (repair turns: `prompts.build_repair_prompt`): (index of the
        prompt in `prompts`, its candidates), each prompt once, in any order."""
        import torch

        if mode == "greedy":
            k = 1
        generator = torch.Generator(device=self.device).manual_seed(self.seed)  # one stream for all batches
        for batch in self.batches(prompts):
            candidates = self._batch([prompts[i] for i in batch], mode, k, generator)
            yield from zip(batch, candidates, strict=True)

    def batches(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """The batches `sample_prompts` runs, as indices into `prompts`: longest prompt first, at most
        `batch_size` to a batch (each prompt keeps its own stop strings)."""
        lengths = [len(prompt_ids(self.tokenizer, p)) for p in prompts]
        ordered = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        return [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def _batch(self, batch: list[Prompt], mode: Mode, k: int, generator: Any) -> list[list[Candidate]]:
        tok = self.tokenizer
        hypotheses = self._decode(batch, mode, k, generator)
        results: list[list[Candidate]] = [[] for _ in batch]
        for t, (prompt, found) in enumerate(zip(batch, hypotheses, strict=True)):
            seen: set[str] = set()
            for _, tokens, logps in found:
                kept, completion = self.until_stop(tokens, prompt.stops)
                program = extract_program(prompt, completion)
                # beams that are one program up to the stop are one candidate; equal samples stay (pass@k counts
                # them)
                if not kept or (mode == "beam" and program in seen):
                    continue
                seen.add(program)
                lo, hi = program_tokens(tok, prompt, kept)
                results[t].append(
                    Candidate(
                        task_id=prompt.task.id,
                        program=program,
                        completion=completion,
                        logprob=float(sum(logps[lo:hi])),
                        num_tokens=hi - lo,
                        model=self.name,
                        tokens=tuple(kept),
                        prefix=prompt.prefix,
                    )
                )
        return results

    def _decode(
        self, batch: list[Prompt], mode: Mode, k: int, generator: Any
    ) -> list[list[tuple[float, list[int], list[float]]]]:
        """Decode a batch with a KV cache, dropping each task's rows as soon as it is finished.

        Returns, per task, its hypotheses as (score, tokens, per-token log-probabilities): the top-k beams
        ranked by score = logP / length (end-of-text token included in both, as transformers does), or k
        samples, or the greedy sequence (score 0). A hypothesis ends at end of text (not in its tokens) or
        at a stop string (its tokens then run past the stop; callers cut them).
        """
        import torch

        model = self.model
        beam = mode == "beam" and k > 1
        per_task = k if mode in ("beam", "sample") else 1
        cache, logits, mask = self._prefill(batch)
        if per_task > 1:
            cache.batch_repeat_interleave(per_task)
            logits = logits.repeat_interleave(per_task, 0)
            mask = mask.repeat_interleave(per_task, 0)
        _grow_in_place(cache)
        rows = [(i // per_task, [], []) for i in range(len(batch) * per_task)]  # (task, tokens, token log-probs)
        scores = torch.zeros(len(rows), device=self.device)
        if beam:  # at the first step all k beams of a task are the same: expand only the first
            scores.view(-1, k)[:, 1:] = float("-inf")
        finished: list[list[tuple[float, list[int], list[float]]]] = [[] for _ in batch]
        stops = [p.stops for p in batch]  # per task
        for step in range(self.max_new_tokens):
            logp = logits.float().log_softmax(-1)
            last = step == self.max_new_tokens - 1
            if beam:
                parents, tokens, new_scores = self._beam_step(rows, scores, logp, k, finished, stops, last)
            else:
                if mode == "sample":
                    probs = _top_p((logits.float() / self.temperature).softmax(-1), self.top_p)
                    chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                else:
                    chosen = logits.argmax(-1)
                chosen_lp = logp.gather(-1, chosen[:, None]).squeeze(-1).tolist()
                parents, tokens, new_scores = [], [], []
                for r, (token, lp) in enumerate(zip(chosen.tolist(), chosen_lp, strict=True)):
                    task, seq, lps = rows[r]
                    if token in self.end_tokens:
                        finished[task].append((0.0, seq, lps))
                    elif last or self._hits_stop(seq + [token], stops[task]):
                        finished[task].append((0.0, seq + [token], lps + [lp]))
                    else:
                        parents.append(r)
                        tokens.append((task, seq + [token], lps + [lp], token))
                        new_scores.append(0.0)
            self.generated_tokens += len(rows)
            if not parents:
                break
            mask = _select_rows(cache, mask, parents)
            rows = [(task, seq, lps) for task, seq, lps, _ in tokens]
            scores = torch.tensor(new_scores, device=self.device)
            next_ids = torch.tensor([[token] for *_, token in tokens], device=self.device)
            with torch.inference_mode():
                logits = model(
                    input_ids=next_ids,
                    attention_mask=mask,
                    position_ids=mask.sum(-1, keepdim=True) - 1,
                    cache=cache,
                    use_cache=True,
                ).logits[:, -1]
        ranked = []
        for found in finished:
            found.sort(key=lambda h: -h[0])
            ranked.append(found[: max(per_task, 1)])
        return ranked

    def _prefill(self, batch: list[Prompt]) -> tuple[Any, Any, Any]:
        """Run each prompt on its own (no padding to compute), then stack the caches left-padded.

        Returns (cache, logits of each prompt's last position, attention mask)."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        ids_of = [prompt_ids(self.tokenizer, p) for p in batch]
        longest = max(len(ids) for ids in ids_of)
        caches, logits = [], []
        with torch.inference_mode():
            for ids in ids_of:
                cache = DynamicCache()
                out = self.model(
                    input_ids=torch.tensor([ids], device=self.device),
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                caches.append(cache)
                logits.append(out.logits[:, -1])
        merged = caches[0]
        for layer_index, layer in enumerate(merged.layers):
            for name in ("keys", "values"):
                parts = [getattr(c.layers[layer_index], name) for c in caches]
                setattr(layer, name, torch.cat([F.pad(t, (0, 0, longest - t.shape[-2], 0)) for t in parts]))
        mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in ids_of], device=self.device)
        return merged, torch.cat(logits), mask

    def _beam_step(self, rows, scores, logp, k, finished, stops, last):
        """One beam-search step over all active tasks: their k best continuations, and the hypotheses
        that end here. Returns the rows to keep (parents), their new state and their scores."""
        vocab = logp.shape[-1]
        n_tasks = len(rows) // k
        candidates = (scores[:, None] + logp).view(n_tasks, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=-1)
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        previous = scores.tolist()
        parents, tokens, new_scores = [], [], []
        for t in range(n_tasks):
            task = rows[t * k][0]
            done = finished[task]
            keep = []
            for rank, (score, flat) in enumerate(zip(top_scores[t], top_index[t], strict=True)):
                if score == float("-inf"):
                    break
                parent, token = t * k + flat // vocab, flat % vocab
                _, seq, lps = rows[parent]
                lp = score - previous[parent]  # the token's log-probability
                if token in self.end_tokens:
                    if rank < k:
                        done.append((score / max(len(seq) + 1, 1), seq, lps))
                elif self._hits_stop(seq + [token], stops[task]):
                    if rank < k:
                        done.append((score / (len(seq) + 1), seq + [token], lps + [lp]))
                else:
                    keep.append((parent, score, (task, seq + [token], lps + [lp], token)))
                if len(keep) == k:
                    break
            length = len(rows[t * k][1]) + 1
            if last or not keep:
                done.extend((score / length, state[1], state[2]) for _, score, state in keep)
                continue
            if len(done) >= k:
                worst = sorted((h[0] for h in done), reverse=True)[k - 1]
                if keep[0][1] / length <= worst:  # no live beam can beat the k-th finished one
                    continue
            while len(keep) < k:  # fewer live candidates than beams: pad with a dead copy
                keep.append((keep[0][0], float("-inf"), keep[0][2]))
            for parent, score, state in keep:
                parents.append(parent)
                tokens.append(state)
                new_scores.append(score)
        return parents, tokens, new_scores

    def _hits_stop(self, tokens: list[int], stops: tuple[str, ...]) -> bool:
        """Whether the text of `tokens` now contains a stop string (only the tail can be new)."""
        if not stops:
            return False
        tail = self.tokenizer.decode(tokens[-max(8, max(map(len, stops)) + 1) :])  # a token holds >= 1 character
        return stop_index(tail, stops) is not None

    def until_stop(self, tokens: list[int], stops: tuple[str, ...]) -> tuple[list[int], str]:
        """`tokens` cut at the first stop string: (the tokens kept, their text up to the stop).

        The kept tokens are the shortest prefix whose text reaches the stop, so a token that runs across it
        (tokenizers that join punctuation and the newlines after it, e.g. Qwen2's and Llama 3's `)\n\n`) is kept
        with the code it holds, and counts in P(t); the text ends where the stop begins."""
        text = self.tokenizer.decode(tokens)
        at = stop_index(text, stops) if stops else None
        if at is None:
            return tokens, text
        lo, hi = 0, len(tokens)
        while lo < hi:  # the smallest j with len(decode(tokens[:j])) >= at
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(tokens[:mid])) >= at:
                hi = mid
            else:
                lo = mid + 1
        return tokens[:lo], text[:at]
