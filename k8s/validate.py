"""Offline, strict validation of rendered manifests, custom resources included.

`kubernetes-validate` knows only the built-in kinds and merely warns on a TrainJob, so a
typo in a custom resource would pass. Here built-in kinds still go to kubernetes-validate
(strict, for one Kubernetes version), and custom kinds are checked with `jsonschema`
against the `openAPIV3Schema` of the CRDs vendored in `k8s/crds/` (README there: which
release). Strict means what `kubectl apply --validate=strict` means: an unknown field is
an error, except under `x-kubernetes-preserve-unknown-fields`. A kind found in neither is
an error, never a silent skip. CEL rules (`x-kubernetes-validations`) are not evaluated.

    kubectl kustomize k8s/overlays/trainjob/cpu | python k8s/validate.py -k 1.31.0 -k 1.37.0 -
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

CRDS = Path(__file__).resolve().parent / "crds"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class CustomSchema:
    """One served version of a vendored CRD: its JSON schema and where it came from."""

    schema: dict
    source: str  # e.g. kubeflow-trainer-v2.3.0


def strict_schema(node: object) -> object:
    """The CRD's structural schema as a JSON schema that refuses unknown fields."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@functools.cache
def custom_schemas(crds: Path = CRDS) -> dict[tuple[str, str], CustomSchema]:
    """(apiVersion, kind) -> schema, for every served version of every vendored CRD."""
    found: dict[tuple[str, str], CustomSchema] = {}
    for path in sorted(crds.glob("*/*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_Loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                if not v.get("served"):
                    continue
                key = (f"{group}/{v['name']}", kind)
                if key in found:
                    raise ValueError(f"{kind} {key[0]} defined twice under {crds}")
                schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                found[key] = CustomSchema(strict_schema(schema), path.parent.name)
    return found


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top)"


def validate_doc(doc: dict, version: str, crds: Path = CRDS) -> tuple[list[str], str]:
    """Errors (empty: valid) and what it was checked against."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    custom = custom_schemas(crds).get(key)
    if custom is None:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return [f"no schema for {key[1]} {key[0]}: not in Kubernetes {version}, "
                    f"nor a CRD under {crds}"], ""  # fmt: skip
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            return [f"{where}: {e.message}"], ""
        return [], "API schema"
    validator = jsonschema.Draft7Validator(custom.schema)
    errors = [f"{_where(e)}: {e.message}" for e in validator.iter_errors(doc)]
    # metadata is ObjectMeta for every kind; the CRD schema only says "object", so the
    # Kubernetes schema checks it, carried by a ConfigMap.
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    try:
        kubernetes_validate.validate(meta, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        errors.append(f"metadata: {e.message}")
    return errors, f"{custom.source} CRD"


def validate_stream(text: str, version: str, crds: Path = CRDS) -> tuple[list[str], dict]:
    """All errors of a YAML stream, and {checked against: [kinds]} for the summary."""
    errors: list[str] = []
    checked: dict[str, set[str]] = {}
    for doc in yaml.load_all(text, Loader=_Loader):
        if not doc:
            continue
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        errs, against = validate_doc(doc, version, crds)
        errors += [f"{name}: {e}" for e in errs]
        if against:
            checked.setdefault(against, set()).add(doc["kind"])
    return errors, checked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", "--kubernetes-version", action="append", required=True,
                   help="e.g. 1.35.0; repeat it to check several versions")  # fmt: skip
    p.add_argument("--crds", type=Path, default=CRDS, help="folder of <project>-<tag>/ CRDs")
    p.add_argument("--label", default="-", help="what to call the input in the summary")
    p.add_argument("file", help="a rendered YAML stream, - for stdin")
    a = p.parse_args(argv)
    text = sys.stdin.read() if a.file == "-" else Path(a.file).read_text()
    status = 0
    for version in a.kubernetes_version:
        errors, checked = validate_stream(text, version, a.crds)
        for e in errors:
            print(f"{a.label}: INVALID (Kubernetes {version}) {e}", file=sys.stderr)
        if errors:
            status = 1
            continue
        against = "; ".join(f"{', '.join(sorted(k))} ({s})" for s, k in sorted(checked.items()))
        print(f"{a.label}: valid (Kubernetes {version}, strict): {against}")
    return status


if __name__ == "__main__":
    sys.exit(main())
