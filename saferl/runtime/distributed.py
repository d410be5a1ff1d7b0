"""torch.distributed inside Ray actors (one process group per role group).

Rendezvous: rank 0 reports its node address (:func:`node_ip`) and a free port
(:func:`free_port`); the driver hands both to every rank, and each rank calls
:func:`init_process_group`, which sets the standard variables (``MASTER_ADDR``, ``MASTER_PORT``,
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and calls ``deepspeed.init_distributed`` (env://).

``LOCAL_RANK`` is the index of the rank's device among the devices this process sees: Ray sets
``CUDA_VISIBLE_DEVICES`` of a GPU actor to the GPU it was given, so that index is 0; on CPU it is 0.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import ray
import torch

__all__ = ["free_port", "init_process_group", "local_device", "node_ip"]


def node_ip() -> str:
    """Address of the node this process runs on, as Ray sees it."""
    return ray.util.get_node_ip_address()


def free_port() -> int:
    """A TCP port that was free a moment ago on this node (the OS picks it).

    The socket is closed before the port is used, so another process could take it in between;
    the rendezvous then fails with an "address in use" error naming the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def local_device(uses_gpus: bool) -> torch.device:
    """``cuda:0`` (the GPU Ray assigned to this actor) for GPU ranks, else ``cpu``.

    Raises:
        RuntimeError: GPU ranks in a process where torch sees no CUDA device.
    """
    if not uses_gpus:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "this rank requested GPUs (group.gpus_per_rank > 0) but torch sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
            f"{torch.__version__})"
        )
    torch.cuda.set_device(0)
    return torch.device("cuda", 0)


def init_process_group(
    master_addr: str,
    master_port: int,
    rank: int,
    world_size: int,
    backend: str,
    timeout_s: float,
) -> None:
    """Join the group's torch.distributed world through DeepSpeed (blocks until all ranks join).

    Args:
        master_addr: rank 0's node address.
        master_port: the port rank 0 picked.
        rank: this rank.
        world_size: ranks of the group.
        backend: ``"gloo"`` or ``"nccl"``.
        timeout_s: timeout of the rendezvous and of every collective.
    """
    import deepspeed  # imported here: its import probes the accelerator
    import deepspeed.ops

    if backend == "gloo":
        # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op
        # (deepspeed_shm_comm) on first use: about a minute, and a C++ toolchain on every node.
        # It only speeds up CPU-only all-reduces within a node; plain gloo is used instead.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    _import_muon_uncompiled()
    os.environ.update(
        {
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
        }
    )
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=timeout_s),
        rank=rank,
        world_size=world_size,
        verbose=False,
    )


def check_joined(rank: int, world_size: int, backend: str) -> None:
    """Check that this process is already rank ``rank`` of a ``world_size`` world on ``backend``
    (a reused rank process, :mod:`saferl.runtime.pool`).

    Raises:
        RuntimeError: the process is in no world, or in another place of another one.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError(
            f"rank {rank} was reused without a torch.distributed world; it must join one"
        )
    found = (dist.get_rank(), dist.get_world_size(), dist.get_backend())
    if found != (rank, world_size, backend):
        raise RuntimeError(
            f"a reused rank process is rank {found[0]} of {found[1]} ({found[2]}), but the group "
            f"needs rank {rank} of {world_size} ({backend})"
        )


def _import_muon_uncompiled() -> None:
    """Import DeepSpeed's Muon optimizer modules with their ``torch.compile`` decorators left off.

    Every engine build and ZeRO gradient reduction imports ``deepspeed.runtime.zero.muon`` for an
    ``isinstance`` check, and that module wraps its update functions in ``torch.compile`` at import,
    which imports TorchInductor: about 1.3 s of CPU in every new rank process (a fifth of a CPU
    rank's start). saferl builds AdamW only (:func:`saferl.runtime.ds_config.deepspeed_config`), so
    Muon's functions never run here and are imported plain. Where DeepSpeed's layout differs (a
    release without these modules), nothing is done.
    """
    import sys

    if "deepspeed.runtime.zero.muon.muon_optimizer" in sys.modules:
        return
    try:
        from deepspeed.runtime import compiler
    except ImportError:
        return
    compile_ = getattr(compiler, "compile", None)
    if compile_ is None:
        return
    compiler.compile = lambda *args, **kwargs: (lambda function: function)
    try:
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
        import deepspeed.runtime.zero.muon.original_muon  # noqa: F401
    except ImportError:
        pass
    finally:
        compiler.compile = compile_
