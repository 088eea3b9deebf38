"""Data-parallel training across processes with accelerate (DDP): who does what, and how they talk.

Started by `accelerate launch -m pper run --config C` (or `pper run --processes N`, which runs that), every
process holds the model; **rank 0 alone** samples, tests, writes the buffer, draws the minibatches, evaluates
and writes checkpoints. The other ranks follow: they wait for rank 0's next command (`Group.send` /
`Group.receive`, a broadcast from rank 0), train in lockstep with it, and stop when it says so. In each step
rank 0 draws the minibatch from the prioritized replay and sends it to every rank; rank r trains on examples
r, r + N, r + 2N, ... of it, and DDP sums the gradients, so a step equals one process's step on the whole
minibatch (`PPERTrainer.train_step`), up to the order of floating-point sums.

While rank 0 samples, tests and evaluates, the others wait in the broadcast for up to
`training.distributed_timeout` seconds (the process group's timeout; torch's default of 30 minutes is shorter
than rank 0's sampling on a large task set). A rank that dies takes the group down with it (the launcher
stops the others); run the same command again and the run resumes from its last checkpoint, which every rank
reads from the run directory (on several machines it must be on a filesystem they share).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..errors import PperError


@dataclass
class Group:
    """This process's place in a data-parallel group and accelerate's `Accelerator` for it."""

    rank: int
    size: int
    accelerator: Any

    @property
    def main(self) -> bool:
        return self.rank == 0

    def send(self, message: Any) -> None:
        """Rank 0: send `message` (any picklable object) to every other rank."""
        assert self.main, "only rank 0 sends"
        self._broadcast(message)

    def receive(self) -> Any:
        """Another rank: the next message rank 0 sends (waits up to the group's timeout)."""
        assert not self.main, "rank 0 sends"
        return self._broadcast(None)

    def share(self, message: Any) -> Any:
        """Rank 0's `message` on every rank (rank 0 passes it, the others pass anything)."""
        return self._broadcast(message)

    def sum(self, value: float) -> float:
        """The sum of `value` over the ranks."""
        import torch
        import torch.distributed as dist

        # on the process group's device: NCCL, accelerate's backend on GPUs, reduces no CPU tensor
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def threads(self, training: bool) -> None:
        """On CPU, torch's threads for this process: its share of the cores while every rank trains, all of
        them otherwise (rank 0 samples and evaluates while the others wait). Launchers start each rank with one
        thread (OMP_NUM_THREADS=1)."""
        import torch

        if self.accelerator.device.type == "cpu":
            cores = len(os.sched_getaffinity(0))
            torch.set_num_threads(max(1, cores // self.size) if training else cores)

    def _broadcast(self, message: Any) -> Any:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched_size() -> int:
    """Processes the launcher (accelerate, torchrun) started, from its environment; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current(timeout: float) -> Group | None:
    """This process's `Group` when it was started by a launcher with more than one process, else None.
    `timeout`: seconds any collective may wait (see the module's docstring)."""
    if launched_size() <= 1:
        return None
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # without it accelerate runs CPU processes as separate single ones
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout))],
    )
    if accelerator.distributed_type == DistributedType.NO:
        raise PperError(f"launched as {launched_size()} processes, but accelerate set up no process group")
    return Group(accelerator.process_index, accelerator.num_processes, accelerator)


def launch_command(processes: int, args: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `python -m pper ARGS` in `processes` processes on this
    machine (DDP over gloo on CPU, tested; on GPUs accelerate's NCCL, not tested here)."""
    import sys

    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "pper", *args,
    ]  # fmt: skip
