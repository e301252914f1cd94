"""torchrun integration: process group from the launcher's environment, and the control messages every process
must agree on (an error, a stop request), sent over a CPU side group so they never wait for the GPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError, SelfKDError, short

_CONTROL = None  # a gloo process group over all processes, for control messages (None in one process)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun); one process without them. Under torchrun each process
    uses the GPU of its LOCAL_RANK (``device`` cuda or auto), or the CPU."""
    global _CONTROL
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        return Dist(), dev
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if dev.index is not None:
            raise ConfigError(f"--device {device} under torchrun: each process uses the GPU of its LOCAL_RANK. Give "
                              "--device cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES.")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started more processes on this machine than it has GPUs "
                              f"({torch.cuda.device_count()}); lower --nproc_per_node or use --device cpu.")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    _CONTROL = dist.new_group(backend="gloo")
    return Dist(rank, world, local), dev


def env_rank() -> int:
    """This process's rank as torchrun sets it (``RANK``), 0 without torchrun; readable before (or without)
    :func:`init_distributed`."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device that exists here; anything else is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ConfigError(f"train.device {short(device)} is not a device selfkd runs on; use auto, cpu, cuda or "
                          "cuda:N.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device '{device}' asks for CUDA, but no GPU is visible; use --device cpu (or auto).")
    if dev.index is not None and dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device '{device}': this machine has {torch.cuda.device_count()} visible GPU(s), "
                          f"numbered from 0; use cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    return dev


def agreed(error: SelfKDError) -> SelfKDError:
    """``error``, marked as raised alike by every process (the CLI prints it once)."""
    error.agreed = True
    return error


def together(fn, main_only: bool = False):
    """``fn()`` on every process (or only the main one), then every process learns whether it failed: a
    :class:`SelfKDError` on any process is raised by all of them (the lowest rank's), so that they stop together
    with one message instead of waiting for each other. Returns ``fn()``'s result (None where it did not run).
    ``fn`` must not run collectives itself: a process that failed before one would leave the others waiting."""
    error, result = None, None
    if not main_only or env_rank() == 0:
        try:
            result = fn()
        except SelfKDError as err:
            error = err
    if _CONTROL is not None:
        errors: list = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error, group=_CONTROL)
        error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise agreed(error)
    return result


def gather_to_main(obj) -> list | None:
    """Under torchrun, every process's ``obj`` (CPU tensors inside) as a rank-indexed list on the main process, None
    on the others. Over the CPU side group, so it suits what a checkpoint keeps of each process."""
    main = dist.get_rank() == 0
    gathered: list | None = [None] * dist.get_world_size() if main else None
    dist.gather_object(obj, gathered, dst=0, group=_CONTROL)
    return gathered


class StopVote:
    """Whether any process was asked to stop (Ctrl-C, SIGTERM: ``flag["stop"]`` names the signal), so that all stop
    after the same step, and whether any could not read its batch for the step (:attr:`failed`). In one process, the
    flag itself. Under torchrun, a sum of the flags over the CPU side group, started before a step and read after it
    (:meth:`start`, :meth:`result`): it travels while the step runs and adds no synchronisation with the GPU."""

    def __init__(self, flag: dict):
        self.flag = flag
        self.failed = False  # a process could not read its batch of the step voted on last

    @property
    def name(self) -> str:
        return self.flag["stop"] or "a stop request (Ctrl-C or SIGTERM) to another process"

    def start(self, failed: bool = False):
        """Start this step's vote; ``failed``: this process could not read its batch of the step."""
        if _CONTROL is None:
            return None
        vote = torch.tensor([float(self.flag["stop"] is not None), float(failed)])
        return vote, dist.all_reduce(vote, group=_CONTROL, async_op=True)

    def result(self, started) -> bool:
        """Whether any process was asked to stop (:attr:`failed` is set too)."""
        if started is None:
            return self.flag["stop"] is not None
        vote, work = started
        work.wait()
        self.failed = bool(vote[1] > 0)
        return bool(vote[0] > 0)

    def now(self) -> bool:
        return self.result(self.start())


def shutdown() -> None:
    global _CONTROL
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL = None
