"""Data-parallel training across processes with ``torch.distributed``, launched by ``torchrun``.

Every process (rank) holds a full copy of the generator and its own energy workers (an ``EnergyBridge`` with
``energy.workers`` processes; one OpenMM context per worker). The batch sizes of the config (each objective's
``batch_size``, ``grid.samples``) are global: all ranks follow one random stream (the config's ``seed``) and draw
every global batch's random numbers, which costs next to nothing, but each rank builds, evaluates (energies, flow
passes, gradients) and back-propagates only its contiguous slice of ``1/world_size``; the trainer's
:class:`~trade_md.objectives.TrainingContext` hands each objective its slice, so no objective knows about ranks.
The ranks therefore draw together exactly the batch one process would draw, their samples are disjoint, and a
run's result does not depend on the number of processes beyond floating-point rounding (this is what the
2-process test checks, to 1e-9 in float64). After ``backward`` the gradients are averaged by one explicit
``all_reduce`` (which works with the double-backward TRADE loss, where a DDP wrapper's hooks would fire inside
``autograd.grad``), and each rank's loss is ``world_size × Σ_slice / n`` so the average is the global mean.
The :class:`~trade_md.objectives.ExpectationGrid` pools its importance-weighted sums (global max of log w, then sums
of w, w², w·U and n) at each refresh and its per-node residual-loss sums and counts at each step, so E[U], the
ESS and the causality weights are identical on every rank and equal to the one-process values. Rank 0 alone shows
the progress bar, validates, and writes checkpoints and ``summary.json``; all ranks hold the same random state,
so ``--resume`` loads the same checkpoint everywhere, with any number of processes.

Launch (any ``trade-md train`` command line; CPU ranks use gloo, ``--device cuda`` uses nccl with one GPU per
rank, ``LOCAL_RANK`` picks the GPU)::

    torchrun --standalone --nproc_per_node 4 -m trade_md.cli train --mode trade \\
        --config systems/alanine_dipeptide/trade.yaml --out runs/trade4
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr HOST --master_port 29500 \\
        -m trade_md.cli train --device cuda --config trade.yaml --out runs/trade16

``torchrun --no-python trade-md train ...`` (the console script) works the same way. Each rank uses
``--threads`` torch threads (default 1): keep ranks × threads × energy workers within the cores.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from trade_md.errors import InputError

__all__ = [
    "DistributedContext",
    "init_from_environment",
    "launched_by_torchrun",
]

_ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` are set)."""
    return all(name in os.environ for name in _ENVIRONMENT)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in an initialised process group, and the collectives the trainer needs.

    rank, world_size, local_rank: from torchrun; device: ``torch.device`` of the collectives' tensors (CPU for
    gloo, ``cuda:<local_rank>`` for nccl).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0 (progress bar, validation, files)."""
        return self.rank == 0

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """``op`` ("sum", "max" or "min") of ``tensor`` over ranks; returns a new tensor (dtype/device of the input)."""
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
               "min": torch.distributed.ReduceOp.MIN}
        buffer = tensor.detach().to(self.device, copy=True)
        torch.distributed.all_reduce(buffer, op=ops[op])
        return buffer.to(tensor.device)

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (keeps skip decisions identical, so no rank waits forever)."""
        return bool(self.all_reduce(torch.tensor([float(flag)], dtype=torch.float64), "min").item() > 0.5)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace every ``.grad`` by its mean over ranks (one flattened all_reduce)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = self.all_reduce(torch.cat([g.reshape(-1) for g in grads])) / self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                buffer = tensor.detach().to(self.device, copy=True)
                torch.distributed.broadcast(buffer, src=0)
                tensor.copy_(buffer.to(tensor.device))

    def mean_terms(self, terms: dict[str, float]) -> dict[str, float]:
        """Loss terms averaged over ranks (the same keys on every rank)."""
        keys = sorted(terms)
        values = self.all_reduce(torch.tensor([terms[k] for k in keys], dtype=torch.float64)) / self.world_size
        return dict(zip(keys, values.tolist()))

    def close(self, *, wait: bool = True) -> None:
        """Leave the process group; ``wait``: first wait until every rank got here (after a successful run, so that
        no rank exits while another still talks to it; pass False when leaving on an error)."""
        if torch.distributed.is_initialized():
            if wait:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def init_from_environment(device: str = "cpu", timeout_s: float = 600.0) -> DistributedContext | None:
    """Join the torchrun process group (gloo for ``device="cpu"``, nccl for ``"cuda"``); ``None`` outside torchrun.

    Uses torchrun's environment (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).
    With cuda, rank r uses GPU ``LOCAL_RANK`` (``torch.cuda.set_device``).
    """
    if not launched_by_torchrun():
        return None
    if not torch.distributed.is_available():
        raise InputError("this torch build has no torch.distributed; run without torchrun or install a full torch")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise InputError(f"rank {rank} needs GPU {local_rank}, but {torch.cuda.device_count()} are visible; "
                             "start at most one process per GPU (--nproc_per_node) or train with --device cpu")
        torch.cuda.set_device(local_rank)
        backend, where = "nccl", torch.device("cuda", local_rank)
    else:
        backend, where = "gloo", torch.device("cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank, world_size, local_rank, where)
