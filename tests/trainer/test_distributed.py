"""trainer.distributed without GPUs: fake environments and fake `nvidia-smi -L` outputs."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import free_port

from core.cli import UsageError
from trainer.distributed import env as denv
from trainer.distributed import launch as train_distributed
from trainer.distributed import mig
from trainer.distributed import process_group as d

A100_MIG = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 2g.10gb     Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
  MIG 1g.5gb      Device  2: (UUID: MIG-1e099852-3624-53b4-a0d9-3a5e9b7c1d2e)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-0b8f4a3e-1111-2222-3333-444455556666)
"""
SLICES = [
    "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
    "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb",
    "MIG-1e099852-3624-53b4-a0d9-3a5e9b7c1d2e",
]
OLD_STYLE = """\
GPU 0: A100-SXM4-40GB (UUID: GPU-e91edf3b-b297-37c1-a2a7-7601c98f9c79)
  MIG 1g.5gb Device 0: (UUID: MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c98f9c79/7/0)
  MIG 1g.5gb Device 1: (UUID: MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c98f9c79/8/0)
"""
OLD_SLICES = [
    "MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c98f9c79/7/0",
    "MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c98f9c79/8/0",
]
FULL_GPUS = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaaaaaa-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbbbbbb-0000-0000-0000-000000000000)
"""


def local(rank: int, nproc: int) -> denv.DistEnv:
    return denv.DistEnv(rank=rank, local_rank=rank, world_size=nproc, local_world_size=nproc)


# --- read_env ---------------------------------------------------------------------------


def test_read_env_nothing_is_one_process():
    env = denv.read_env({})
    assert env == denv.DistEnv(0, 0, 1, 1)
    assert not env.is_distributed and env.is_main


def test_read_env_torchrun():
    env = denv.read_env(
        {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    )
    assert env == denv.DistEnv(rank=3, local_rank=1, world_size=4, local_world_size=2)
    assert env.is_distributed and not env.is_main


def test_read_env_pytorchjob_without_torchrun():
    env = denv.read_env({"RANK": "1", "WORLD_SIZE": "2", "PET_NNODES": "2", "PET_NODE_RANK": "1"})
    assert env == denv.DistEnv(rank=1, local_rank=0, world_size=2, local_world_size=1)


def test_read_env_pet_only():
    env = denv.read_env({"PET_NNODES": "3", "PET_NODE_RANK": "2", "PET_NPROC_PER_NODE": "1"})
    assert env == denv.DistEnv(rank=2, local_rank=0, world_size=3, local_world_size=1)


def test_read_env_pet_nproc_auto_is_fine():
    assert denv.read_env({"PET_NPROC_PER_NODE": "auto"}) == denv.DistEnv()


def test_read_env_pet_several_procs_needs_torchrun():
    with pytest.raises(UsageError, match="torchrun"):
        denv.read_env({"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4"})


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"LOCAL_RANK": "0", "RANK": "x"}, "RANK='x' is not an integer"),
        ({"LOCAL_RANK": "0", "RANK": "2", "WORLD_SIZE": "2"}, "rank 2 of 2"),
    ],
)
def test_read_env_bad_values(environ, match):
    with pytest.raises(UsageError, match=match):
        denv.read_env(environ)


# --- nvidia-smi -L parsing ----------------------------------------------------------------


def test_parse_full_gpus_and_mig_children():
    gpus = mig.parse_nvidia_smi_list(A100_MIG)
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA A100-SXM4-40GB"
    assert gpus[0].uuid == "GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77"
    assert [m.uuid for m in gpus[0].mig_devices] == SLICES
    assert [m.profile for m in gpus[0].mig_devices] == ["3g.20gb", "2g.10gb", "1g.5gb"]
    assert gpus[1].mig_devices == ()


def test_parse_old_style_ids_and_nothing():
    gpus = mig.parse_nvidia_smi_list(OLD_STYLE)
    assert [m.uuid for m in gpus[0].mig_devices] == OLD_SLICES
    assert mig.parse_nvidia_smi_list(None) == []
    assert mig.parse_nvidia_smi_list("NVIDIA-SMI has failed\n") == []


def test_run_nvidia_smi_missing_binary(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert mig.run_nvidia_smi_list() is None


# --- visible slices and pinning -------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "smi", "expected"),
    [
        ({}, None, []),  # no GPU at all
        ({}, FULL_GPUS, []),  # full GPUs
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, FULL_GPUS, []),
        ({}, A100_MIG, SLICES),  # unset -> everything nvidia-smi lists
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, A100_MIG, SLICES),
        ({"NVIDIA_VISIBLE_DEVICES": ",".join(SLICES[1:])}, A100_MIG, SLICES[1:]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, None, []),  # legacy runtime: no device at all
        ({"CUDA_VISIBLE_DEVICES": SLICES[2]}, A100_MIG, SLICES[2:]),
        ({"CUDA_VISIBLE_DEVICES": SLICES[0], "NVIDIA_VISIBLE_DEVICES": "all"}, None, SLICES[:1]),
        ({"CUDA_VISIBLE_DEVICES": "0"}, A100_MIG, SLICES),  # a MIG-enabled GPU by index
        ({"CUDA_VISIBLE_DEVICES": "1"}, A100_MIG, []),  # a full GPU next to it
        ({"CUDA_VISIBLE_DEVICES": ""}, A100_MIG, []),  # CPU only
        ({"CUDA_VISIBLE_DEVICES": ",".join(OLD_SLICES)}, None, OLD_SLICES),
        ({}, OLD_STYLE, OLD_SLICES),
    ],
)
def test_visible_mig_devices(environ, smi, expected):
    assert mig.visible_mig_devices(environ, smi) == expected


# What NVIDIA's DRA driver gives a container with a MIG claim (kubernetes-sigs/
# dra-driver-nvidia-gpu, cmd/gpu-kubelet-plugin/cdi.go): CDI device nodes for the slice and its
# parent GPU, and no device-list variable; `nvidia-smi -L` inside shows the parent and the
# claimed slices only.
# The device plugin in CDI mode sets no list either; CDI specs of other claims in the pod
# (IMEX channels, vfio) set NVIDIA_VISIBLE_DEVICES=void.
DRA_ONE_SLICE = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 2g.10gb     Device  0: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
"""
DRA_ENVIRONS = [{}, {"NVIDIA_VISIBLE_DEVICES": "void"}, {"NVIDIA_VISIBLE_DEVICES": "all"}]


@pytest.mark.parametrize("environ", DRA_ENVIRONS)
def test_dra_claimed_slice_is_found_without_a_device_list(environ):
    environ = dict(environ)
    assert mig.visible_mig_devices(environ, DRA_ONE_SLICE) == SLICES[1:2]
    assert mig.pin_mig_slice(local(0, 1), environ, DRA_ONE_SLICE) == SLICES[1]
    assert "CUDA_VISIBLE_DEVICES" not in environ, "one slice: CUDA picks it by itself"


@pytest.mark.parametrize("environ", DRA_ENVIRONS)
def test_dra_several_claimed_slices_one_per_local_rank(environ):
    """A claim with count > 1 (the dra/mig template's constraint keeps them on one GPU)."""
    for r, want in enumerate(SLICES):
        env = dict(environ)
        assert mig.pin_mig_slice(local(r, len(SLICES)), env, A100_MIG) == want
        assert env["CUDA_VISIBLE_DEVICES"] == want


def test_device_plugin_and_dra_agree_on_the_same_slice():
    plugin = {"NVIDIA_VISIBLE_DEVICES": SLICES[1]}  # the device plugin's env strategy
    assert mig.visible_mig_devices(plugin, A100_MIG) == mig.visible_mig_devices({}, DRA_ONE_SLICE)


def test_dra_slice_through_a_fake_nvidia_smi_binary(tmp_path, monkeypatch):
    """The real subprocess path: a fake `nvidia-smi` on PATH prints what the driver's
    container shows, and the backend chosen for it is gloo."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\n[ "$1" = -L ] || exit 9\ncat <<"X"\n{DRA_ONE_SLICE}X\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    environ = {"NVIDIA_VISIBLE_DEVICES": "void"}
    on = mig.pin_mig_slice(local(0, 1), environ, mig.run_nvidia_smi_list())
    assert on == SLICES[1]
    assert d.choose_backend("auto", local(0, 1), True, on is not None, 1) == "gloo"


def test_pin_no_gpu_and_full_gpus_leave_env_alone():
    for smi in (None, FULL_GPUS):
        environ: dict[str, str] = {}
        assert mig.pin_mig_slice(local(1, 2), environ, smi) is None
        assert environ == {}


def test_pin_one_slice_leaves_env_alone():
    environ = {"CUDA_VISIBLE_DEVICES": SLICES[1]}
    assert mig.pin_mig_slice(local(0, 1), environ, A100_MIG) == SLICES[1]
    assert environ == {"CUDA_VISIBLE_DEVICES": SLICES[1]}


@pytest.mark.parametrize(("smi", "slices"), [(A100_MIG, SLICES), (OLD_STYLE, OLD_SLICES)])
def test_pin_several_slices_each_local_rank_its_own(smi, slices):
    for r, want in enumerate(slices):
        environ = {"NVIDIA_VISIBLE_DEVICES": "all"}
        assert mig.pin_mig_slice(local(r, len(slices)), environ, smi) == want
        assert environ["CUDA_VISIBLE_DEVICES"] == want


def test_pin_several_slices_from_cuda_visible_devices():
    environ = {"CUDA_VISIBLE_DEVICES": ",".join(SLICES[:2])}
    assert mig.pin_mig_slice(local(1, 2), environ, None) == SLICES[1]
    assert environ["CUDA_VISIBLE_DEVICES"] == SLICES[1]


def test_pin_rank_without_a_slice_is_a_clear_error():
    environ = {"NVIDIA_VISIBLE_DEVICES": ",".join(SLICES[:2])}
    with pytest.raises(UsageError, match=r"local rank 2 has no MIG slice.*2 slice\(s\)"):
        mig.pin_mig_slice(local(2, 3), environ, A100_MIG)
    assert "CUDA_VISIBLE_DEVICES" not in environ


# --- backend choice --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "nproc", "cuda", "mig", "count", "expected"),
    [
        ("auto", 2, False, False, 0, "gloo"),  # CPU
        ("auto", 2, True, False, 2, "nccl"),  # one full GPU per rank
        ("auto", 2, True, False, 8, "nccl"),
        ("auto", 2, True, False, 1, "gloo"),  # two ranks share one GPU
        ("auto", 2, True, True, 1, "gloo"),  # MIG slices
        ("auto", 1, True, True, 1, "gloo"),
        ("gloo", 2, True, False, 2, "gloo"),
        ("nccl", 2, True, False, 2, "nccl"),
    ],
)
def test_choose_backend(requested, nproc, cuda, mig, count, expected):
    assert d.choose_backend(requested, local(0, nproc), cuda, mig, count) == expected


@pytest.mark.parametrize(
    ("cuda", "mig", "count", "match"),
    [
        (False, False, 0, "needs CUDA"),
        (True, True, 1, "MIG"),
        (True, False, 1, "one GPU per process"),
    ],
)
def test_choose_backend_explicit_nccl_refused(cuda, mig, count, match):
    with pytest.raises(UsageError, match=match):
        d.choose_backend("nccl", local(0, 2), cuda, mig, count)


def test_choose_backend_nccl_on_mig_only_when_opted_in():
    """NCCL_MULTI_RANK_GPU_ENABLE=1 lets explicit nccl run on slices; auto stays gloo."""
    assert d.choose_backend("nccl", local(1, 2), True, True, 1, nccl_multi_rank_gpu=True) == "nccl"
    assert d.choose_backend("auto", local(1, 2), True, True, 1, nccl_multi_rank_gpu=True) == "gloo"
    with pytest.raises(UsageError, match="NCCL_MULTI_RANK_GPU_ENABLE=1"):
        d.choose_backend("nccl", local(1, 2), True, True, 1)


def test_choose_backend_unknown():
    with pytest.raises(UsageError, match="--dist-backend"):
        d.choose_backend("mpi", local(0, 1), False, False, 0)


# --- setup and collectives in one process ----------------------------------------------------


def test_setup_single_process_cpu():
    environ: dict[str, str] = {}
    env, device, backend = d.setup("auto", "cpu", environ)
    assert (env, device, backend) == (denv.DistEnv(), torch.device("cpu"), "gloo")
    assert not dist.is_initialized() and environ == {}


def test_setup_without_master_addr_is_a_clear_error():
    environ = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    with pytest.raises(UsageError, match="MASTER_ADDR and MASTER_PORT unset"):
        d.setup("auto", "cpu", environ)


def test_collectives_are_identities_without_a_group():
    t = torch.arange(6.0).reshape(3, 2)
    assert d.all_gather_cat(t) is t
    assert d.broadcast_(t) is t
    assert torch.equal(d.all_reduce_mean(t), t)
    assert d.all_reduce_mean(torch.tensor(3)).dtype == torch.float64
    d.barrier()
    d.cleanup()
    assert (d.get_rank(), d.get_world_size()) == (0, 1)


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    _, _, backend = d.setup("auto", "cpu", os.environ)
    try:
        gathered = d.all_gather_cat(torch.full((2, 3), float(rank)))
        perm = torch.randperm(8) if rank == 0 else torch.zeros(8, dtype=torch.long)
        d.broadcast_(perm)
        mean = d.all_reduce_mean(torch.tensor(float(rank)))
        d.barrier()
        out[rank] = (backend, d.get_rank(), d.get_world_size(), gathered, perm, mean)
    finally:
        d.cleanup()


def test_two_process_gloo_collectives():
    world = 2
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(world, free_port(), out), nprocs=world, join=True)
        results = dict(out)
    want = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat_interleave(3).reshape(4, 3)
    for rank in range(world):
        backend, r, ws, gathered, perm, mean = results[rank]
        assert (backend, r, ws) == ("gloo", rank, world)
        assert torch.equal(gathered, want)  # rank order
        assert torch.equal(perm, results[0][4])
        assert mean.item() == pytest.approx(0.5)


# --- the launcher's flags (no processes) -----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["--num-gpus", "0"], ["--num-gpus", "two"], ["--num-gpus", "2", "--max-restarts", "-1"]],
)
def test_launcher_bad_flags_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        train_distributed.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err


def test_launcher_passes_unknown_flags_through():
    ns, rest = train_distributed.parse_args(
        ["--num-gpus", "2", "--epochs", "1", "--max-restarts", "1", "--batch-size", "8"]
    )
    assert (ns.num_gpus, ns.max_restarts, ns.nnodes) == (2, 1, (1, 1))
    assert rest == ["--epochs", "1", "--batch-size", "8"]


def test_launcher_standalone_and_multi_node_rendezvous():
    single = train_distributed.launch_config(train_distributed.parse_args(["--num-gpus", "3"])[0])
    assert (single.nproc_per_node, single.rdzv_backend, single.rdzv_endpoint) == (
        3,
        "c10d",
        "localhost:0",
    )
    argv = ["--num-gpus", "1", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:29511"]
    multi = train_distributed.launch_config(train_distributed.parse_args(argv)[0])
    assert (multi.min_nodes, multi.max_nodes, multi.rdzv_endpoint) == (2, 2, "127.0.0.1:29511")
    with pytest.raises(UsageError, match="--rdzv-endpoint"):
        train_distributed.launch_config(train_distributed.parse_args(argv[:4])[0])
