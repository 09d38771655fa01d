"""Data-parallel training with torch.distributed: the launch, and the hooks the loop calls.

More than one training process runs under ``torchrun`` (`torch.distributed.run`): one process
per GPU with NCCL, or several CPU processes with gloo. Each rank builds the same seeded
networks, reads its own shard of every epoch (`DistributedSampler`, reshuffled per epoch from
the run's seed), and DistributedDataParallel averages the gradients, so the ranks hold the same
weights after every step. `train.batch_size` is per process: N processes × batch b step like
one process × batch N·b (exactly so with instance norm, see below).

BatchNorm: on CUDA the layers become SyncBatchNorm (statistics over the global batch). torch's
SyncBatchNorm refuses CPU tensors, so on CPU each rank normalizes its own batch; the running
statistics of rank 0 are broadcast at every forward (DDP's ``broadcast_buffers``) and are the
ones saved. So with ``norm: batch`` results depend on the number of processes; the train
stage's key includes the world size when it is above one (see `p2p.stages.pipeline`).

Only rank 0 writes checkpoints, previews, metrics and the bundle; every rank resumes from the
same checkpoint, and a run resumes exactly for the same world size. When one rank dies,
torchrun stops the others and the stage fails with one line; a rerun resumes.

Needs only torch (the launcher runs ``python -m torch.distributed.run``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from p2p.core.errors import ConfigError, StageError
from p2p.core.threads import apply_budget, decide_budget
from p2p.model.world import processes_per_node

#: Seconds torchrun gets to stop its ranks after SIGTERM before they are killed.
STOP_GRACE_S = 10.0

if TYPE_CHECKING:
    from p2p.core.config import TrainConfig
    from p2p.model.pix2pix import Pix2Pix


@dataclass(frozen=True)
class Rank:
    """Where this process stands: `rank` of `world` (world 1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the one process that writes files."""
        return self.rank == 0


def current() -> Rank:
    """This process's rank, from the initialized process group (world 1 when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Rank()
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_torchrun() -> Rank:
    """Join the process group torchrun describes in the environment (NCCL when CUDA is
    present and asked for by ``P2P_DDP_BACKEND``, else gloo); select this rank's GPU; compute
    with this rank's share of the node's cores (`p2p.core.threads`)."""
    backend = os.environ.get("P2P_DDP_BACKEND", "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    apply_budget(decide_budget(slots=int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return current()


def exit_rank(code: int) -> NoReturn:
    """End this rank's process: after a last barrier when it succeeded (rank 0's files are
    complete), leave the process group with `destroy_process_group`, flush, and leave with
    `os._exit`, past the interpreter's teardown.

    Destroying the group stops gloo's (and NCCL's) threads in order; a rank that left with
    them running could abort in the interpreter's teardown ("terminate called without an
    active exception", SIGABRT) after all work was done, which torchrun reports as a failed
    rank. It still happened after the group was destroyed, on a loaded 2-core machine (rank 1
    of tests/test_distributed.py, its results already written): other C++ objects torch
    destroys at teardown hold threads too. Everything a rank writes is complete and closed
    before this point (atomic files), so nothing is left for the teardown to do.
    """
    if dist.is_initialized():
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wrap(run: Pix2Pix) -> None:
    """Make `run`'s step data-parallel when this process is one of several ranks.

    The plain networks stay in ``run.g``/``run.d`` (checkpoints keep their keys); the step
    calls the DDP wrappers ``run.g_step``/``run.d_step``. On CUDA, BatchNorm becomes
    SyncBatchNorm first.
    """
    where = current()
    if where.world == 1:
        return
    if run.device.type == "cuda":
        run.g = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.g)  # type: ignore[no-untyped-call,assignment]
        run.d = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.d)  # type: ignore[no-untyped-call,assignment]
    ids = [where.local_rank] if run.device.type == "cuda" else None
    run.g_step = DistributedDataParallel(run.g, device_ids=ids)
    run.d_step = DistributedDataParallel(run.d, device_ids=ids)


def sampler(data: Dataset[Any], seed: int) -> DistributedSampler[Any]:
    """This rank's shard of each epoch, shuffled from `seed` and the epoch (`set_epoch`).

    With one process it is a plain seeded shuffle, the same order that N ranks split
    between them (rank r takes every N-th index from r), so runs differ only in batching.
    When N does not divide the chip count, the order is padded with its first chips so that
    every rank takes the same number of steps.
    """
    where = current()
    return DistributedSampler(
        data, num_replicas=where.world, rank=where.rank, shuffle=True, seed=seed
    )


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over all ranks (itself when there is one)."""
    if current().world == 1:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total / current().world


def barrier() -> None:
    """Wait for every rank (nothing when there is one)."""
    if current().world > 1:
        dist.barrier()


def launch(
    cfg: TrainConfig,
    run_id: str,
    module: str,
    args: list[str],
    log_path: Path,
    poll: Callable[[], None] | None = None,
) -> None:
    """Run ``python -m module *args`` as this node's training processes under torchrun.

    One node: a standalone rendezvous on a free local port. Several: the c10d rendezvous at
    `cfg.rendezvous`, with `run_id` (the stage key) as its id, so every node that runs the
    same stage joins the same job.

    `poll` is called about once a second while the processes run; whatever it raises (an
    interrupt, a stall) stops torchrun and its ranks (their own process group) and goes on up.

    Raises:
        ConfigError: More CUDA processes per node than this machine has GPUs.
        StageError: A rank failed (killed, out of memory, an exception); torchrun stopped
            the others. The message names the rank and `log_path` (the processes' output).
    """
    nproc = processes_per_node(cfg)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda and nproc > torch.cuda.device_count():
        gpus = torch.cuda.device_count()
        raise ConfigError("train.devices", f"{nproc} processes but {gpus} CUDA GPU(s) here")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if cfg.nodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [f"--nnodes={cfg.nodes}", "--rdzv-backend=c10d"]
        cmd += [f"--rdzv-endpoint={cfg.rendezvous}", f"--rdzv-id={run_id[:32]}"]
    env = {**os.environ, "P2P_DDP_BACKEND": "nccl" if cuda else "gloo"}
    # share the cores this process may use instead of oversubscribing them (each rank applies
    # the same budget at init; this sizes the pools torchrun itself starts with)
    env["OMP_NUM_THREADS"] = str(decide_budget(slots=nproc).torch)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # earlier attempts' output stays above this one's
        start = log.tell()
        done = subprocess.Popen(
            [*cmd, "-m", module, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # stopped as a group, by this process
        )
        _wait(done, poll)
    if done.returncode != 0:
        problem = _failure(log_path, start)
        raise StageError(log_path.parent, f"{problem}; see {log_path}; rerun to resume")


def _wait(proc: subprocess.Popen[bytes], poll: Callable[[], None] | None) -> None:
    """Wait for torchrun, calling `poll` about once a second; stop its group if that raises."""
    try:
        while proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            if poll is not None and proc.returncode is None:
                poll()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise


def _failure(log_path: Path, start: int) -> str:
    """The first failure in the ranks' log from byte `start` on: a rank's own ``error:``
    line, else torchrun's summary (rank and exit code or signal)."""
    with open(log_path, "rb") as fh:
        fh.seek(start)
        text = fh.read().decode(errors="replace")
    own = re.search(r"^error: (.+)$", text, re.M)
    if own is not None:
        return f"distributed training failed: {own.group(1)}"
    root = text.rfind("Root Cause")  # torchrun's summary names the first failure there
    found = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", text[max(root, 0) :], re.S)
    if found is None:
        return "distributed training failed"
    rank, code = found.group(1), int(found.group(2))
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return f"distributed training failed: rank {rank} {how}"
