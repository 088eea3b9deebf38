"""The transformers back-end: batched beam search, sampling and greedy decoding with exact log-probabilities.

Tasks are grouped by prompt style and sorted by prompt length, and run `batch_size` at a time with left
padding. Generation stops each beam at the end of its program (the style's stop strings, or end of text),
not at `max_new_tokens`. Each sequence is then cut at its stop string on a token boundary, and its
log-probability is computed by one forward pass over exactly the tokens kept, so the stored logP always
belongs to the stored tokens (and no step's full scores are kept during generation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..tasks import Task
from .prompts import Prompt, build_prompt, extract_program, stop_index
from .sampler import Candidate, Mode

LOGITS_BUDGET = 256 << 20  # bytes of logits materialised at once while scoring


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

    def sample(self, tasks: Sequence[Task], mode: Mode, k: int) -> Iterator[tuple[Task, list[Candidate]]]:
        import torch

        if mode == "greedy":
            k = 1
        torch.manual_seed(self.seed)
        prompts = [build_prompt(t, self.tokenizer) for t in tasks]
        lengths = {id(p): len(self.tokenizer(p.text).input_ids) for p in prompts}
        ordered = sorted(prompts, key=lambda p: (p.stops, -lengths[id(p)]))
        batches: list[list[Prompt]] = []
        for p in ordered:
            if batches and len(batches[-1]) < self.batch_size and batches[-1][0].stops == p.stops:
                batches[-1].append(p)
            else:
                batches.append([p])
        for batch in batches:
            candidates = self._batch(batch, mode, k)
            for i, prompt in enumerate(batch):
                yield prompt.task, candidates[i]

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def _batch(self, batch: list[Prompt], mode: Mode, k: int) -> list[list[Candidate]]:
        import torch

        tok = self.tokenizer
        encoded = tok([p.text for p in batch], return_tensors="pt", padding=True).to(self.device)
        options: dict[str, Any] = {"num_return_sequences": k}
        if mode == "sample":
            options.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            options.update(do_sample=False, num_beams=k)
        if batch[0].stops:
            options.update(stop_strings=list(batch[0].stops), tokenizer=tok)
        with torch.inference_mode():
            out = self.model.generate(
                **encoded, max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id, **options
            )
        new = out[:, encoded.input_ids.shape[1] :].tolist()
        ends = {tok.eos_token_id, tok.pad_token_id}
        kept: list[list[int]] = []
        for row in new:
            cut = next((i for i, t in enumerate(row) if t in ends), len(row))
            self.generated_tokens += cut
            kept.append(self._until_stop(row[:cut], batch[0].stops))
        prompt_ids = [tok(p.text).input_ids for p in batch]
        rows = [(prompt_ids[i // k], kept[i]) for i in range(len(kept))]
        logprobs = self.score(rows)
        results: list[list[Candidate]] = [[] for _ in batch]
        seen: set[tuple[int, tuple[int, ...]]] = set()
        for i, tokens in enumerate(kept):
            if not tokens or (i // k, tuple(tokens)) in seen:  # no program, or beams equal up to the stop
                continue
            seen.add((i // k, tuple(tokens)))
            prompt = batch[i // k]
            completion = tok.decode(tokens)
            results[i // k].append(
                Candidate(
                    task_id=prompt.task.id,
                    program=extract_program(prompt, completion),
                    completion=completion,
                    logprob=logprobs[i],
                    num_tokens=len(tokens),
                    model=self.name,
                    tokens=tuple(tokens),
                )
            )
        return results

    def _until_stop(self, tokens: list[int], stops: tuple[str, ...]) -> list[int]:
        """The longest prefix of `tokens` whose text ends before the first stop string."""
        if not stops:
            return tokens
        text = self.tokenizer.decode(tokens)
        at = stop_index(text, stops)
        if at is None:
            return tokens
        lo, hi = 0, len(tokens)
        while lo < hi:  # the largest j with len(decode(tokens[:j])) <= at
            mid = (lo + hi + 1) // 2
            if len(self.tokenizer.decode(tokens[:mid])) <= at:
                lo = mid
            else:
                hi = mid - 1
        return tokens[:lo]

    def score(self, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        """log P(completion | prompt) for each (prompt tokens, completion tokens), by one forward pass."""
        import torch

        vocab = self.model.config.vocab_size
        results = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        start = 0
        while start < len(order):
            longest = max(len(rows[i][1]) for i in order[start : start + 1]) + 1
            per_chunk = max(1, LOGITS_BUDGET // (longest * vocab * 4))
            chunk = order[start : start + per_chunk]
            start += len(chunk)
            chunk = [i for i in chunk if rows[i][1]]
            if not chunk:
                continue
            seqs = [rows[i][0] + rows[i][1] for i in chunk]
            width = max(len(s) for s in seqs)
            keep = max(len(rows[i][1]) for i in chunk) + 1
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
            logp = logits[:, :-1].log_softmax(-1)  # position j predicts token j + 1
            targets = ids[:, -keep + 1 :]
            picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(chunk):
                n = len(rows[i][1])
                results[i] = float(picked[row, -n:].sum())
        return results
