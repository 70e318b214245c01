"""A small Kustomize renderer for the tests: exactly the features deploy/k8s uses, nothing more.

The real renderer is `kubectl kustomize deploy/k8s/overlays/<name>` (or `kustomize build`); CI
has neither a kustomize binary nor a cluster, so the tests render with this instead. Anything
in a kustomization.yaml that this module does not implement raises `Unsupported` rather than
being silently ignored, so a new feature in the manifests fails the tests until it is
implemented here (or checked with the real tool).

Supported, in kustomize's order for one kustomization:
  resources (files and directories holding a kustomization.yaml, rendered recursively),
  secretGenerator / configMapGenerator (`literals` only, with disableNameSuffixHash: true),
  patches (`path:` or inline `patch:` strategic-merge patches, no `target:`),
  namespace, labels (metadata only: includeSelectors/includeTemplates false), images.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KNOWN_KEYS = {
    "apiVersion", "kind", "namespace", "labels", "resources", "images", "patches",
    "secretGenerator", "configMapGenerator", "generatorOptions",
}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "RuntimeClass",
}
# Strategic-merge keys of the list fields the manifests patch (from the Kubernetes API types).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


def load_yaml_documents(path: Path) -> list[Obj]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def render(directory: Path) -> list[Obj]:
    """Render the kustomization in `directory` into a list of Kubernetes objects."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise FileNotFoundError(f"no kustomization.yaml in {directory}")
    (k,) = load_yaml_documents(kfile)
    unknown = set(k) - KNOWN_KEYS
    if unknown:
        raise Unsupported(f"{kfile}: unsupported kustomization fields {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise Unsupported(f"{kfile}: kind {k.get('kind')}")

    objects: list[Obj] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(load_yaml_documents(path))
        else:
            raise FileNotFoundError(f"{kfile}: resource {entry} does not exist")

    options = k.get("generatorOptions", {})
    for kind, field in (("Secret", "secretGenerator"), ("ConfigMap", "configMapGenerator")):
        for gen in k.get(field, []):
            objects.append(_generate(kind, gen, options, kfile))

    for patch in k.get("patches", []):
        if set(patch) - {"path", "patch"} or len(patch) != 1:
            raise Unsupported(f"{kfile}: only `path:` or inline `patch:` patches, got {patch}")
        docs = (
            load_yaml_documents(directory / patch["path"])
            if "path" in patch
            else list(yaml.safe_load_all(patch["patch"]))
        )
        for doc in docs:
            _apply_strategic_merge(objects, doc, kfile)

    _check_unique(objects, kfile)

    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]

    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise Unsupported(f"{kfile}: labels with includeSelectors/includeTemplates")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])

    for image in k.get("images", []):
        if set(image) - {"name", "newName", "newTag", "digest"}:
            raise Unsupported(f"{kfile}: image fields {sorted(image)}")
        for obj in objects:
            for container in iter_containers(obj):
                container["image"] = _retag(container["image"], image)

    return objects


def _generate(kind: str, gen: Obj, options: Obj, kfile: Path) -> Obj:
    if set(gen) - {"name", "literals", "options", "type"}:
        raise Unsupported(f"{kfile}: generator fields {sorted(gen)} (only name/literals)")
    merged = {**options, **gen.get("options", {})}
    if not merged.get("disableNameSuffixHash"):
        # Real kustomize appends a content hash and rewrites every reference to it.
        raise Unsupported(f"{kfile}: generators need disableNameSuffixHash: true here")
    data = {}
    for literal in gen.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise ValueError(f"{kfile}: literal {literal!r} has no '='")
        data[key] = value
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
        obj["data"] = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
    else:
        obj["data"] = data
    return obj


def _check_unique(objects: list[Obj], kfile: Path) -> None:
    seen = set()
    for obj in objects:
        ident = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if ident in seen:
            raise ValueError(f"{kfile}: {ident} defined twice")
        seen.add(ident)


def _apply_strategic_merge(objects: list[Obj], patch: Obj, kfile: Path) -> None:
    """Merge `patch` into the one object with its kind and name (and namespace, if it has one)."""
    meta = patch.get("metadata", {})
    targets = [
        obj for obj in objects
        if obj["kind"] == patch["kind"]
        and obj["apiVersion"] == patch["apiVersion"]
        and obj["metadata"]["name"] == meta["name"]
        and ("namespace" not in meta or obj["metadata"].get("namespace") == meta["namespace"])
    ]
    if len(targets) != 1:
        raise ValueError(
            f"{kfile}: patch {patch['kind']}/{meta.get('name')} matches {len(targets)} objects"
        )
    merged = strategic_merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge for the subset used here: maps merge key by key, `null`
    deletes, lists of MERGE_KEYS fields merge item by item on their key (plus `ports`, on
    containerPort or port), every other list is replaced. `$patch` directives are refused."""
    if isinstance(patch, dict) and isinstance(base, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise Unsupported(f"strategic-merge directive {key}")
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        key = MERGE_KEYS.get(field)
        if field == "ports" and all(isinstance(p, dict) for p in base + patch):
            key = "containerPort" if any("containerPort" in p for p in base + patch) else "port"
        if key is None:
            return copy.deepcopy(patch)
        # As kustomize orders them: the patch's items in the patch's order (merged into the base
        # item with the same key), then the base items the patch does not mention.
        by_key = {item.get(key): item for item in base if isinstance(item, dict)}
        out = []
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise Unsupported(f"list {field} item without merge key {key}: {item}")
            existing = by_key.get(item[key])
            out.append(strategic_merge(existing, item, "") if existing else copy.deepcopy(item))
        mentioned = {item[key] for item in patch}
        return out + [copy.deepcopy(b) for b in base if b.get(key) not in mentioned]
    return copy.deepcopy(patch)


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec inside a workload object (None for other kinds)."""
    kind = obj["kind"]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return obj["spec"]
    return None


def iter_containers(obj: Obj, init: bool = True) -> list[Obj]:
    spec = pod_spec(obj)
    if spec is None:
        return []
    fields = ("initContainers", "containers") if init else ("containers",)
    return [c for field in fields for c in spec.get(field, [])]


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of an image reference (a registry port is not a tag)."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _retag(image: str, rule: Obj) -> str:
    name, tag, digest = split_image(image)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag", tag)
    out = name + (f":{tag}" if tag else "")
    return out + (f"@{digest}" if digest and "newTag" not in rule else "")
