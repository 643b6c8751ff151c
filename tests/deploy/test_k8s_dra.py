"""The dra overlays: devices from Dynamic Resource Allocation claims (NVIDIA's DRA driver)
instead of device-plugin limits, and nothing else changed from the gpu and mig overlays."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from test_k8s import K8S, _render, accelerator_limits, container, needs_kubectl, rendered

# dra overlay -> the device-plugin overlay it is built on
BASES = {"dra/gpu": "gpu", "dra/mig": "mig"}
_RENDERED: dict[str, list[dict]] = {}


def dra(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        _RENDERED[overlay] = [
            d for d in yaml.safe_load_all(_render(K8S / "overlays" / overlay)) if d
        ]
    return _RENDERED[overlay]


def workloads(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Job", "Deployment")}


def templates(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ResourceClaimTemplate"}


def claim_request(docs: list[dict], workload: dict) -> dict:
    """The one device request a workload's pods get through their one claim."""
    pod = workload["spec"]["template"]["spec"]
    (claim,) = pod["resourceClaims"]
    assert container(workload)["resources"]["claims"] == [{"name": claim["name"]}]
    (request,) = templates(docs)[claim["resourceClaimTemplateName"]]["spec"]["spec"]["devices"][
        "requests"
    ]
    return request["exactly"]


@needs_kubectl
@pytest.mark.parametrize("overlay", BASES)
def test_every_accelerated_workload_claims_instead_of_limits(overlay: str) -> None:
    docs = dra(overlay)
    accelerated = [w for w in workloads(docs).values() if w["metadata"]["labels"].get(
        "moco.io/accelerated") == "true"]  # fmt: skip
    assert {w["metadata"]["name"] for w in accelerated} == set(workloads(docs))
    for w in accelerated:
        assert accelerator_limits(container(w)) == {}, "no device-plugin resource left"
        assert claim_request(docs, w)["allocationMode"] == "ExactCount"
    for t in templates(docs).values():  # applied by every make k8s-* step
        assert t["metadata"]["labels"]["app.kubernetes.io/component"] == "config"


@needs_kubectl
def test_gpu_claims_as_many_gpus_as_the_device_plugin_limits() -> None:
    docs = dra("dra/gpu")
    for name, w in workloads(docs).items():
        want = accelerator_limits(container(workloads(rendered("gpu"))[name]))["nvidia.com/gpu"]
        got = claim_request(docs, w)
        assert got["deviceClassName"] == "gpu.nvidia.com"
        assert got["count"] == int(want), name


@needs_kubectl
def test_mig_claims_one_slice_of_the_mig_overlays_profile() -> None:
    docs = dra("dra/mig")
    (resource,) = accelerator_limits(container(workloads(rendered("mig"))["moco-train"]))
    profile = resource.removeprefix("nvidia.com/mig-")
    (template,) = templates(docs).values()
    devices = template["spec"]["spec"]["devices"]
    assert devices["constraints"] == [
        {"requests": ["slice"], "matchAttribute": "gpu.nvidia.com/parentUUID"}
    ], "a pod's slices stay on one GPU"
    for w in workloads(docs).values():
        got = claim_request(docs, w)
        assert got["deviceClassName"] == "mig.nvidia.com" and got["count"] == 1
        (sel,) = got["selectors"]
        m = re.fullmatch(r"device\.attributes\['gpu\.nvidia\.com'\]\.profile == '([^']+)'",
                         sel["cel"]["expression"])  # fmt: skip
        assert m and m[1] == profile


def _without_devices(w: dict) -> dict:
    w = copy.deepcopy(w)
    pod = w["spec"]["template"]["spec"]
    pod.pop("resourceClaims", None)
    c = container(w)
    c["resources"].pop("claims", None)
    c["resources"]["limits"] = {
        k: v for k, v in c["resources"]["limits"].items() if not k.startswith("nvidia.com/")
    }
    return w


@needs_kubectl
@pytest.mark.parametrize(("overlay", "base"), BASES.items())
def test_only_the_devices_differ_from_the_device_plugin_overlay(overlay: str, base: str) -> None:
    """Same argv, env, backend, process count, volumes, tolerations: the MIG pinning and gloo
    of the mig overlay apply unchanged (trainer/distributed/mig.py finds the slice)."""
    mine, theirs = workloads(dra(overlay)), workloads(rendered(base))
    assert set(mine) == set(theirs)
    for name in mine:
        assert _without_devices(mine[name]) == _without_devices(theirs[name]), name
    others = lambda docs: [d for d in docs if d["kind"] not in (  # noqa: E731
        "Job", "Deployment", "ResourceClaimTemplate")]  # fmt: skip
    assert others(dra(overlay)) == others(rendered(base))
