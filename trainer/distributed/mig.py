"""MIG slices: which ones this process sees (`nvidia-smi -L`), and pinning one per local rank.

Everything takes the environment and nvidia-smi's output as arguments, so the whole MIG path is
testable with fake environments and fake `nvidia-smi -L` outputs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from core.cli import UsageError
from trainer.distributed.env import DistEnv

_GPU_LINE = re.compile(r"^GPU\s+(\d+):\s*(.*?)\s*\(UUID:\s*([^)\s]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s*\(UUID:\s*([^)\s]+)\)")


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
    slices); else MIG entries of NVIDIA_VISIBLE_DEVICES (the device plugin's env strategy);
    else every slice `nvidia-smi -L` lists. The last covers devices injected by CDI, where
    the variable says nothing: NVIDIA's DRA driver and the device plugin in CDI mode set
    no device list, and CDI specs may set it to `void` (only the legacy runtime reads it),
    so `void`/`none` are not taken to mean "no GPU"; nvidia-smi sees what is there.
    """
    gpus = parse_nvidia_smi_list(nvidia_smi_output)
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None and cuda.strip().lower() != "all":
        return [uuid for entry in _entries(cuda) for uuid in _resolve(entry, gpus)]
    mig = [e for e in _entries(environ.get("NVIDIA_VISIBLE_DEVICES", "")) if e.startswith("MIG-")]
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
