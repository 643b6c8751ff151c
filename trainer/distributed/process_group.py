"""torchrun environment, backend choice, the process group and the collectives MoCo needs.

Everything that reads the environment takes it as an argument (the entry point passes
`os.environ`), so the whole MIG path is testable with fake environments and fake
`nvidia-smi -L` outputs. The collectives are identities when torch.distributed is not
initialised, so single-process code calls them unconditionally.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, MutableMapping

import torch
import torch.distributed as dist

from core.cli import UsageError
from core.device import pick_device
from trainer.distributed.env import DistEnv, read_env
from trainer.distributed.mig import pin_mig_slice, run_nvidia_smi_list

BACKENDS = ("auto", "nccl", "gloo")


def choose_backend(
    requested: str,
    env: DistEnv,
    cuda_available: bool,
    on_mig: bool,
    device_count: int,
    nccl_multi_rank_gpu: bool = False,
) -> str:
    """auto -> nccl only when every local rank has its own full GPU, else gloo.

    Explicit nccl on MIG slices only with NCCL_MULTI_RANK_GPU_ENABLE=1 (nccl_multi_rank_gpu):
    NCCL >= 2.30 then accepts ranks on partitions of one GPU (experimental; auto stays gloo).
    """
    own_gpus = cuda_available and not on_mig and device_count >= env.local_world_size
    if requested == "auto":
        return "nccl" if own_gpus else "gloo"
    if requested == "gloo":
        return "gloo"
    if requested != "nccl":
        raise UsageError(f"--dist-backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if not cuda_available:
        raise UsageError("--dist-backend nccl needs CUDA GPUs and none is available; use gloo")
    if on_mig:
        if nccl_multi_rank_gpu:
            return "nccl"
        raise UsageError(
            "--dist-backend nccl does not work on MIG slices (NCCL refuses several ranks on "
            "slices of one GPU unless NCCL_MULTI_RANK_GPU_ENABLE=1, experimental, NCCL >= "
            "2.30); use --dist-backend gloo or auto"
        )
    if not own_gpus:
        raise UsageError(
            f"--dist-backend nccl needs one GPU per process: {env.local_world_size} local "
            f"processes share {device_count} GPU(s); use --dist-backend gloo or auto"
        )
    return "nccl"


def setup(
    requested_backend: str, device_pref: str, environ: MutableMapping[str, str]
) -> tuple[DistEnv, torch.device, str]:
    """Read the env, pin a MIG slice, pick the device and join the process group.

    Returns (env, device, backend); the group is only initialised when world_size > 1.
    MASTER_ADDR/MASTER_PORT come from torchrun (env:// rendezvous).
    """
    env = read_env(environ)
    mig_slice = None
    if device_pref != "cpu":
        mig_slice = pin_mig_slice(env, environ, run_nvidia_smi_list())
    device = pick_device(device_pref, 0 if mig_slice is not None else env.local_rank)
    cuda = device.type == "cuda"
    backend = choose_backend(
        requested_backend,
        env,
        cuda_available=cuda,
        on_mig=mig_slice is not None,
        device_count=torch.cuda.device_count() if cuda else 0,
        nccl_multi_rank_gpu=environ.get("NCCL_MULTI_RANK_GPU_ENABLE", "").strip() == "1",
    )
    if cuda:
        torch.cuda.set_device(device)
    if env.is_distributed and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(v)]
        if missing:
            raise UsageError(
                f"WORLD_SIZE={env.world_size} but {' and '.join(missing)} unset: "
                "start the trainer with torchrun or python -m trainer.train_distributed"
            )
        dist.init_process_group(
            backend,
            store=_restart_safe_store(environ, env),
            rank=env.rank,
            world_size=env.world_size,
            device_id=device if backend == "nccl" else None,
        )
    return env, device, backend


def _restart_safe_store(environ: Mapping[str, str], env: DistEnv) -> dist.Store | None:
    """Under torchrun, the agent's store with one key prefix per restart attempt.

    The elastic agent keeps one TCP store for all attempts, so without a prefix a restarted
    worker group reads the previous group's gloo addresses and fails to connect. None
    (plain env:// rendezvous) outside torchrun.
    """
    if environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        environ["MASTER_ADDR"],
        int(environ["MASTER_PORT"]),
        env.world_size,
        is_master=False,
        timeout=dist.constants.default_pg_timeout,
    )
    attempt = environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"/moco/attempt_{attempt}/", store)


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """DDP without the per-forward buffer broadcast; the queue is identical on every rank.

    Broadcasting a 65,536 x 2,048 queue every step would cost more than the step. torch 2.13
    renamed the switch to `forward_sync_buffers` (the old `broadcast_buffers` warns); older
    torch (the 2.11 of docs/GPU.md) only has the old name, with the same meaning.
    """
    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    switch = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(model, **{switch: False})


def cleanup() -> None:
    """Leave the process group (if any), so the process exits without a warning."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    """Number of processes in the group; 1 without a process group."""
    return dist.get_world_size() if _active() else 1


@torch.no_grad()
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 in rank order (same shape on all ranks).

    No gradient flows back: MoCo gathers keys, which are never differentiated.
    """
    if not _active():
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `t` in place with rank `src`'s copy (e.g. the shuffle-BN permutation)."""
    if _active():
        dist.broadcast(t, src)
    return t


@torch.no_grad()
def broadcast_buffers_(module: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Give every rank `src`'s buffers. BN running statistics stay per rank in training (see
    wrap_ddp); before every rank embeds, they take rank 0's, the ones its checkpoint holds."""
    if _active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)
    return module


@torch.no_grad()
def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks, as a new tensor (for logging losses and metrics)."""
    out = t.detach().clone()
    if not out.is_floating_point():
        out = out.double()
    if _active():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if _active():
        dist.barrier()
