"""What torchrun tells a process: its rank, local rank and the world size, from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.cli import UsageError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as torchrun (or a PyTorchJob) describes it."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_var(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer") from None


def read_env(environ: Mapping[str, str]) -> DistEnv:
    """DistEnv from torchrun's variables; without LOCAL_RANK, one process per node.

    Without torchrun (a PyTorchJob running the script directly), RANK/WORLD_SIZE or the
    Kubeflow PET_NODE_RANK/PET_NNODES describe one process per pod.
    """
    if "LOCAL_RANK" in environ:
        world_size = _int_var(environ, "WORLD_SIZE", 1)
        env = DistEnv(
            rank=_int_var(environ, "RANK", 0),
            local_rank=_int_var(environ, "LOCAL_RANK", 0),
            world_size=world_size,
            local_world_size=_int_var(environ, "LOCAL_WORLD_SIZE", world_size),
        )
    else:
        nproc = environ.get("PET_NPROC_PER_NODE", "").strip()
        if nproc.isdigit() and int(nproc) > 1:
            raise UsageError(
                f"PET_NPROC_PER_NODE={nproc} asks for {nproc} processes per node, but this "
                "process was not started by torchrun (LOCAL_RANK is unset): run the trainer "
                "through `torchrun` (it reads the PET_* variables)"
            )
        env = DistEnv(
            rank=_int_var(environ, "RANK", _int_var(environ, "PET_NODE_RANK", 0)),
            world_size=_int_var(environ, "WORLD_SIZE", _int_var(environ, "PET_NNODES", 1)),
        )
    if not (0 <= env.rank < env.world_size and 0 <= env.local_rank < env.local_world_size):
        raise UsageError(
            f"inconsistent distributed environment: rank {env.rank} of {env.world_size}, "
            f"local rank {env.local_rank} of {env.local_world_size}"
        )
    return env
