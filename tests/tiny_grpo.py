"""What the tests that drive a real TRL GRPOTrainer share: the default model, two HumanEval tasks, a tiny config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TinyGRPO:
    model: Any
    tokenizer: Any
    tasks: list[Any]
    data: Any
    config: Any

    @property
    def task_ids(self) -> dict[str, str]:
        """Prompt -> task id, as `pper rl` passes it to the replaying trainer."""
        return dict(zip(self.data["prompt"], self.data["task_id"], strict=True))


def tiny_grpo(tmp_path: Path, completion_length: int, steps: int) -> TinyGRPO:
    """The default model (left padding), the first two HumanEval tasks as TRL's dataset, and a GRPOConfig of
    `steps` steps of 4 completions (2 prompts x 2) of at most `completion_length` tokens, at a learning rate that
    leaves the weights as they are, on the CPU, saving nothing, logging every step."""
    import trl

    from pper.generation import load_model
    from pper.rl import rl_dataset
    from pper.tasks import load_tasks

    model, tokenizer, _ = load_model("default")
    tokenizer.padding_side = "left"
    tasks = load_tasks("humaneval", limit=2)
    config = trl.GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
                            max_completion_length=completion_length, max_steps=steps, learning_rate=1e-12, beta=0.0,
                            report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
                            bf16=False)  # fmt: skip
    return TinyGRPO(model, tokenizer, tasks, rl_dataset(tasks, tokenizer), config)
