"""Several processes training one model (torchrun): which process this is, and the few collective
steps the commands need. With one process every function is a no-op, so the commands read the same
either way.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in each process's
environment; `start` joins the process group they describe: NCCL between GPUs, gloo on CPUs.
"""

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks wait for each other while one of them fills its share of the feature store or rank 0
# writes checkpoints: far longer than a training step, so wait longer than torch's default.
COLLECTIVE_TIMEOUT = timedelta(hours=3)


def launched() -> bool:
    """Whether this process was started by torchrun (or any launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 writes the run directory, logs and progress; with one process that is this one."""
    return rank() == 0


def local_device(requested: torch.device) -> torch.device:
    """Each process on a node drives its own GPU (LOCAL_RANK); CPU processes share the CPU."""
    if requested.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return requested


def start(device: torch.device) -> None:
    """Join torchrun's process group, once; only rank 0 keeps printing to stdout."""
    if not launched() or active():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one copy of every report, not one per process


def stop() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def share(items: list) -> list:
    """This process's part of `items`: every world_size-th item, from its rank on."""
    return items[rank() :: world_size()]


def gather_objects(value) -> list:
    """Every process's `value`, in rank order, on every process."""
    if not active():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def sum_over_ranks(*numbers: float) -> list[float]:
    """Each number summed over the processes (a running loss, a count of clips)."""
    if not active():
        return list(numbers)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    total = torch.tensor(numbers, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def broadcast_object(value):
    """Rank 0's `value` on every process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
