"""torchrun environment, backend choice, MIG slice pinning and the collectives MoCo needs.

Everything that reads the environment takes it as an argument (the entry point passes
`os.environ`), so the whole MIG path is testable with fake environments and fake
`nvidia-smi -L` outputs. The collectives are identities when torch.distributed is not
initialised, so single-process code calls them unconditionally.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.device import pick_device
from trainer.errors import UsageError

BACKENDS = ("auto", "nccl", "gloo")
_GPU_LINE = re.compile(r"^GPU\s+(\d+):\s*(.*?)\s*\(UUID:\s*([^)\s]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s*\(UUID:\s*([^)\s]+)\)")


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


@dataclass(frozen=True)
class MigDevice:
    """One MIG slice: its profile (e.g. 1g.5gb), index on its GPU, and CUDA id."""

    index: int
    profile: str
    uuid: str


@dataclass(frozen=True)
class GpuDevice:
    """One physical GPU from `nvidia-smi -L`, with its MIG slices if MIG is enabled."""

    index: int
    name: str
    uuid: str
    mig_devices: tuple[MigDevice, ...] = ()


def parse_nvidia_smi_list(text: str | None) -> list[GpuDevice]:
    """Parse `nvidia-smi -L`; MIG lines belong to the GPU line above them.

    Handles both id styles: `MIG-<uuid>` (driver >= 470) and `MIG-GPU-<uuid>/<gi>/<ci>`.
    """
    gpus: list[GpuDevice] = []
    for line in (text or "").splitlines():
        if m := _GPU_LINE.match(line):
            gpus.append(GpuDevice(int(m[1]), m[2], m[3]))
        elif (m := _MIG_LINE.match(line)) and gpus:
            gpu = gpus[-1]
            mig = MigDevice(int(m[2]), m[1], m[3])
            gpus[-1] = GpuDevice(gpu.index, gpu.name, gpu.uuid, (*gpu.mig_devices, mig))
    return gpus


def run_nvidia_smi_list(timeout: float = 20.0) -> str | None:
    """`nvidia-smi -L` output, or None when there is no nvidia-smi or it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _entries(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


def _resolve(entry: str, gpus: list[GpuDevice]) -> list[str]:
    """A CUDA_VISIBLE_DEVICES entry -> the MIG slices it selects (none for a plain GPU)."""
    if entry.startswith("MIG-"):
        return [entry]
    for gpu in gpus:
        if entry in (str(gpu.index), gpu.uuid):
            return [m.uuid for m in gpu.mig_devices]
    return []


def visible_mig_devices(environ: Mapping[str, str], nvidia_smi_output: str | None) -> list[str]:
    """The MIG slices this process may use, in order; [] when it is not on MIG.

    CUDA_VISIBLE_DEVICES wins (MIG ids as given, GPU indices/uuids resolved to their
    slices); else MIG entries of NVIDIA_VISIBLE_DEVICES (what a Kubernetes device plugin
    sets); else, when those are unset or `all`, every slice `nvidia-smi -L` lists.
    """
    gpus = parse_nvidia_smi_list(nvidia_smi_output)
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None and cuda.strip().lower() != "all":
        return [uuid for entry in _entries(cuda) for uuid in _resolve(entry, gpus)]
    nvidia = environ.get("NVIDIA_VISIBLE_DEVICES", "all").strip()
    if nvidia.lower() in ("none", "void", ""):
        return []
    mig = [e for e in _entries(nvidia) if e.startswith("MIG-")]
    return mig or [m.uuid for gpu in gpus for m in gpu.mig_devices]


def pin_mig_slice(
    env: DistEnv, environ: MutableMapping[str, str], nvidia_smi_output: str | None = None
) -> str | None:
    """Give this process its own MIG slice; returns the slice it runs on (None: no MIG).

    CUDA enumerates one MIG slice per process, so with several slices visible each local
    rank keeps slice LOCAL_RANK in CUDA_VISIBLE_DEVICES. Call before CUDA initialises.
    """
    slices = visible_mig_devices(environ, nvidia_smi_output)
    if not slices:
        return None
    if env.local_rank >= len(slices):
        raise UsageError(
            f"local rank {env.local_rank} has no MIG slice of its own: {len(slices)} slice(s) "
            f"visible ({', '.join(slices)}) for {env.local_world_size} local process(es); "
            "request one slice per process or lower --nproc-per-node"
        )
    mine = slices[env.local_rank]
    if len(slices) > 1:
        environ["CUDA_VISIBLE_DEVICES"] = mine
    return mine


def choose_backend(
    requested: str, env: DistEnv, cuda_available: bool, on_mig: bool, device_count: int
) -> str:
    """auto -> nccl only when every local rank has its own full GPU, else gloo."""
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
        raise UsageError(
            "--dist-backend nccl does not work on MIG slices (NCCL refuses several ranks on "
            "slices of one GPU); use --dist-backend gloo or auto"
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
