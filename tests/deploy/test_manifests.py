"""The deploy/ tree: container images (deploy/docker) and Kubernetes manifests (deploy/k8s).

No container engine, kustomize binary or cluster is needed: the kustomizations are rendered by
tests/deploy/kustomize.py (the real renderer is `kubectl kustomize deploy/k8s/overlays/dev`),
every object is validated against the Kubernetes 1.37 OpenAPI schemas (kubernetes-validate,
strict), and the manifests are checked against the code they deploy: the CLI parser, the
Settings fields and defaults, and the gRPC service names of the generated protos.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from app.cli import build_parser
from shared.settings import Settings
from tests.deploy import dockerfile, kustomize

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
K8S_VERSION = "1.37"
IMAGE_PREFIX = "shiftrec-"
ROLES = ("ingestion", "features", "inference")
GPU = "nvidia.com/gpu"

KUSTOMIZATIONS = sorted(
    str(p.parent.relative_to(K8S)) for p in K8S.glob("**/kustomization.yaml")
)
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]

Obj = dict[str, Any]


# --------------------------------------------------------------------------------- helpers


@cache
def _rendered(name: str) -> tuple[Obj, ...]:
    return tuple(kustomize.render(K8S / name))


def rendered(name: str) -> list[Obj]:
    """A fresh copy of the rendered kustomization (tests may not alter the cache)."""
    return copy.deepcopy(list(_rendered(name)))


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def is_shiftrec(container: Obj) -> bool:
    return kustomize.split_image(container["image"])[0].rsplit("/", 1)[-1].startswith(IMAGE_PREFIX)


def image_target(container: Obj) -> str:
    """The Dockerfile target an image is built from: shiftrec-<target> (README's convention)."""
    return kustomize.split_image(container["image"])[0].rsplit("/", 1)[-1][len(IMAGE_PREFIX):]


@cache
def parsed_dockerfile() -> dockerfile.Dockerfile:
    return dockerfile.parse(DOCKERFILE)


def argv(container: Obj) -> list[str]:
    """The arguments `shiftrec` receives in this container (command/args over the image's)."""
    df = parsed_dockerfile()
    target = image_target(container)
    entrypoint = df.last(target, "ENTRYPOINT").exec_form()
    cmd = df.last(target, "CMD").exec_form()
    command = container.get("command", entrypoint)
    args = container.get("args", cmd if "command" not in container else [])
    full = [*command, *args]
    assert full[0] == "shiftrec", f"{container['name']} does not run shiftrec: {full}"
    return full[1:]


def parse_cli(args: list[str]):
    """build_parser().parse_args(args); a usage error becomes an AssertionError with the message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code == 0:
            return None  # --help
        raise AssertionError(f"`shiftrec {' '.join(args)}` does not parse: {err.getvalue()}") from None


def effective_env(container: Obj, objects: list[Obj]) -> dict[str, str]:
    """Literal environment of a container: envFrom ConfigMaps, then env values (which win)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            env.update(find(objects, "ConfigMap", name).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env.pop(var["name"], None)
    return env


def setting(container: Obj, objects: list[Obj], field: str) -> Any:
    """The value shared.settings.Settings would read in this container (env or default)."""
    env = effective_env(container, objects)
    raw = env.get(f"SHIFTREC_{field.upper()}")
    default = Settings.model_fields[field].default
    if raw is None:
        return default
    if isinstance(default, bool):
        assert raw.lower() in {"true", "false", "1", "0"}, f"SHIFTREC_{field.upper()}={raw!r}"
        return raw.lower() in {"true", "1"}
    return type(default)(raw)


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if kustomize.pod_spec(o) is not None]


def role_deployments(objects: list[Obj]) -> dict[str, tuple[Obj, Obj]]:
    """role → (Deployment, its `shiftrec serve <role>` container)."""
    out: dict[str, tuple[Obj, Obj]] = {}
    for dep in of_kind(objects, "Deployment"):
        for container in kustomize.iter_containers(dep, init=False):
            if is_shiftrec(container):
                args = parse_cli(argv(container))
                if args is not None and args.command == "serve":
                    assert args.service not in out, f"two Deployments serve {args.service}"
                    out[args.service] = (dep, container)
    return out


def grpc_service_name(role: str) -> str:
    """The full gRPC service name, from the generated protos (not from the manifests)."""
    module = {
        "ingestion": "shiftrec.v1.ingestion_pb2",
        "features": "shiftrec.v1.features_pb2",
        "inference": "shiftrec.v1.inference_pb2",
    }[role]
    descriptor = __import__(module, fromlist=["DESCRIPTOR"]).DESCRIPTOR
    (service,) = descriptor.services_by_name.values()
    return service.full_name


def listen_port(role: str, container: Obj, objects: list[Obj]) -> int:
    args = parse_cli(argv(container))
    if args.port:
        return args.port
    return setting(container, objects, f"{role}_port")


def effective_security(pod: Obj, container: Obj, key: str) -> Any:
    """A securityContext field of the container, falling back to the pod's where Kubernetes does."""
    csc = container.get("securityContext", {})
    if key in csc:
        return csc[key]
    return pod.get("securityContext", {}).get(key)


def cronjobs_running(objects: list[Obj], subcommand: str) -> list[tuple[Obj, Obj]]:
    out = []
    for cj in of_kind(objects, "CronJob"):
        for c in kustomize.iter_containers(cj, init=False):
            if is_shiftrec(c) and argv(c)[:1] == [subcommand]:
                out.append((cj, c))
    return out


def pod_template_labels(obj: Obj) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


CREDENTIALS_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


# ------------------------------------------------------------------------- the renderer


def test_every_kustomization_is_rendered() -> None:
    assert "base" in KUSTOMIZATIONS
    assert {"overlays/dev", "overlays/gpu"} <= set(OVERLAYS)


def test_renderer_strategic_merge_semantics() -> None:
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["p", "q"]}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["r"]},
                            {"name": "b"}]}
    merged = kustomize.strategic_merge(base, patch)
    # kustomize's order: the patch's items first, in its order, then the other base items.
    assert merged["containers"][0]["env"] == [{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}]
    assert merged["containers"][0]["args"] == ["r"]  # plain lists are replaced
    assert [c["name"] for c in merged["containers"]] == ["a", "b"]
    assert base["containers"][0]["args"] == ["p", "q"]  # inputs untouched
    with pytest.raises(kustomize.Unsupported):
        kustomize.strategic_merge(base, {"containers": [{"$patch": "delete", "name": "a"}]})


def test_renderer_refuses_unknown_kustomize_features(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas: [{name: x, count: 2}]\n")
    with pytest.raises(kustomize.Unsupported):
        kustomize.render(tmp_path)


def test_image_retagging() -> None:
    rule = {"name": "shiftrec-inference", "newName": "reg.example:5000/shiftrec-inference-cuda"}
    assert kustomize._retag("shiftrec-inference:0.1.0", rule) == (
        "reg.example:5000/shiftrec-inference-cuda:0.1.0"
    )
    assert kustomize._retag("shiftrec-features:0.1.0", rule) == "shiftrec-features:0.1.0"
    assert kustomize.split_image("reg.example:5000/a/b") == ("reg.example:5000/a/b", None, None)


def _comparable(obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    if obj["kind"] == "Secret":  # kustomize wraps long base64 values
        obj["data"] = {k: base64.b64decode("".join(v.split())) for k, v in obj.get("data", {}).items()}
    return obj


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    """Where kubectl is installed, the real renderer must produce the same objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (CI): the test renderer stands alone")
    proc = subprocess.run([kubectl, "kustomize", str(K8S / name)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    real = [_comparable(o) for o in yaml.safe_load_all(proc.stdout) if o]
    ours = [_comparable(o) for o in rendered(name)]

    def key(o: Obj) -> tuple[str, str, str]:
        return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]

    assert sorted(map(key, real)) == sorted(map(key, ours))
    by_key = {key(o): o for o in real}
    for obj in ours:
        assert obj == by_key[key(obj)], f"{key(obj)} differs from kubectl kustomize"


# ---------------------------------------------------------------------- schema validation


def test_validator_is_strict() -> None:
    """The schema check can fail: an unknown field in a container is an error."""
    dep = copy.deepcopy(find(rendered("base"), "Deployment", role_deployments(rendered("base"))
                             ["features"][0]["metadata"]["name"]))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, desired_version=K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_objects_match_kubernetes_schemas(name: str) -> None:
    objects = rendered(name)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, desired_version=K8S_VERSION, strict=True)
        assert obj["metadata"].get("namespace"), f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_role_has_one_deployment(name: str) -> None:
    assert set(role_deployments(rendered(name))) == set(ROLES)


# ------------------------------------------------------------------------------- workloads


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_grpc_probes_on_each_service(name: str) -> None:
    objects = rendered(name)
    for role, (_, container) in role_deployments(objects).items():
        port = listen_port(role, container, objects)
        expected = {"port": port, "service": grpc_service_name(role)}
        grpc_ports = [p for p in container["ports"] if p["containerPort"] == port]
        assert grpc_ports, f"{role}: listen port {port} is not a containerPort"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container.get(probe, {}).get("grpc") == expected, f"{role} {probe}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_inference_startup_probe_waits_for_the_model(name: str) -> None:
    objects = rendered(name)
    _, container = role_deployments(objects)["inference"]
    probe = container["startupProbe"]
    assert probe["grpc"] == container["readinessProbe"]["grpc"]
    allowed = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )
    assert allowed >= 300, f"startupProbe gives up after {allowed} s"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_metrics_port_is_exposed(name: str) -> None:
    objects = rendered(name)
    for role, (_, container) in role_deployments(objects).items():
        port = setting(container, objects, "metrics_port")
        assert port, f"{role}: SHIFTREC_METRICS_PORT is not set"
        assert {"name": "metrics", "containerPort": port} in container["ports"], role


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_resources_requests_and_limits(name: str) -> None:
    for obj in workloads(rendered(name)):
        for c in kustomize.iter_containers(obj):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), (
                    f"{obj['kind']}/{obj['metadata']['name']} {c['name']}: {kind}"
                )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_security_context(name: str) -> None:
    df = parsed_dockerfile()
    for obj in workloads(rendered(name)):
        pod = kustomize.pod_spec(obj)
        for c in kustomize.iter_containers(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']} {c['name']}"
            assert effective_security(pod, c, "runAsNonRoot") is True, where
            uid = effective_security(pod, c, "runAsUser")
            assert isinstance(uid, int) and uid > 0, where
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            seccomp = effective_security(pod, c, "seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            if is_shiftrec(c):
                # The same numeric user as the image, so file ownership in the image holds.
                user = df.last(image_target(c), "USER").value.split(":")[0]
                assert str(uid) == user, f"{where}: runAsUser {uid}, image USER {user}"
                # A read-only root filesystem needs a writable /tmp.
                tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                assert tmp and not tmp[0].get("readOnly"), f"{where}: no writable /tmp"
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                assert "emptyDir" in volumes[tmp[0]["name"]], where


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_termination_grace_covers_the_stop_grace(name: str) -> None:
    objects = rendered(name)
    for obj in workloads(objects):
        pod = kustomize.pod_spec(obj)
        for c in kustomize.iter_containers(obj, init=False):
            if not is_shiftrec(c):
                continue
            stop_grace = setting(c, objects, "stop_grace_seconds")
            period = pod.get("terminationGracePeriodSeconds", 30)
            assert period >= 10 and period > stop_grace, (
                f"{obj['metadata']['name']}: {period} s for a {stop_grace} s stop grace"
            )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_containers_bind_all_interfaces_and_skip_auto_migration(name: str) -> None:
    objects = rendered(name)
    for obj in workloads(objects):
        for c in kustomize.iter_containers(obj):
            if is_shiftrec(c):
                assert setting(c, objects, "bind_host") == "0.0.0.0", c["name"]
                assert setting(c, objects, "auto_migrate") is False, c["name"]
                assert setting(c, objects, "log_format") == "json", c["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_env_vars_are_known_settings(name: str) -> None:
    """A misspelt SHIFTREC_* variable would be ignored silently by pydantic-settings."""
    fields = {f"SHIFTREC_{f.upper()}" for f in Settings.model_fields}
    objects = rendered(name)
    names = {k for cm in of_kind(objects, "ConfigMap") for k in cm.get("data", {})}
    for obj in workloads(objects):
        for c in kustomize.iter_containers(obj):
            names |= {v["name"] for v in c.get("env", [])}
    unknown = {n for n in names if n.startswith("SHIFTREC_")} - fields
    assert not unknown, f"not in shared.settings.Settings: {sorted(unknown)}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_ingestion_migrates_the_schema_first(name: str) -> None:
    objects = rendered(name)
    dep, _ = role_deployments(objects)["ingestion"]
    inits = [c for c in dep["spec"]["template"]["spec"].get("initContainers", []) if is_shiftrec(c)]
    commands = [argv(c)[:2] for c in inits]
    assert ["db", "upgrade"] in commands
    for c in inits:
        parse_cli(argv(c))


# -------------------------------------------------------------------------------- secrets


def database_url_refs(container: Obj) -> list[Obj]:
    return [v for v in container.get("env", []) if v["name"] == "SHIFTREC_DATABASE_URL"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_database_url_comes_from_the_secret(name: str) -> None:
    objects = rendered(name)
    users = []
    for obj in workloads(objects):
        for c in kustomize.iter_containers(obj):
            if not is_shiftrec(c):
                continue
            refs = database_url_refs(c)
            assert "SHIFTREC_DATABASE_URL" not in effective_env(c, objects), c["name"]
            if refs:
                users.append(c["name"])
                ref = refs[0]["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == ("shiftrec-database", "url")
                assert not ref.get("optional"), c["name"]
    # Everything that reads the event store gets it (inference talks to features only).
    assert {"migrate", "ingestion", "features", "training"} <= set(users)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_service_requires_the_auth_token(name: str) -> None:
    """A missing Secret fails the pod (loudly), never silently means no authentication."""
    for role, (_, container) in role_deployments(rendered(name)).items():
        refs = [v for v in container.get("env", []) if v["name"] == "SHIFTREC_AUTH_TOKEN"]
        assert len(refs) == 1, role
        ref = refs[0]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("shiftrec-auth", "token"), role
        assert not ref.get("optional"), role


def test_no_secret_travels_as_an_argument() -> None:
    for name in KUSTOMIZATIONS:
        for obj in workloads(rendered(name)):
            for c in kustomize.iter_containers(obj):
                joined = " ".join([*c.get("command", []), *c.get("args", [])])
                assert not re.search(r"PASSWORD|TOKEN|SECRET|DATABASE_URL|--database-url", joined), c["name"]


def policies_selecting(objects: list[Obj], labels: dict[str, str], direction: str) -> list[Obj]:
    return [
        p for p in of_kind(objects, "NetworkPolicy")
        if direction in p["spec"]["policyTypes"] and label_selector_matches(p["spec"]["podSelector"], labels)
    ]


def label_selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", []),
              "NotIn": not present or value not in expr.get("values", []),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True


def allowed_ingress(objects: list[Obj], labels: dict[str, str]) -> list[tuple[Obj, int]]:
    """(peer, port) pairs the NetworkPolicies let into pods with `labels`."""
    return [
        (peer, port["port"])
        for policy in policies_selecting(objects, labels, "Ingress")
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [{}])
        for port in rule.get("ports", [{"port": None}])
    ]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_network_policies_let_only_the_storefront_in_and_only_inference_reach_features(name: str) -> None:
    objects = rendered(name)
    deny = [p for p in of_kind(objects, "NetworkPolicy") if p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny, "no default-deny NetworkPolicy"
    storefront = {"podSelector": {"matchLabels": {"shiftrec.io/client": "storefront"}}, "namespaceSelector": {}}
    monitoring = {"podSelector": {"matchLabels": {"shiftrec.io/client": "monitoring"}}, "namespaceSelector": {}}
    deployments = role_deployments(objects)
    for role, port in (("ingestion", 50051), ("inference", 50053)):
        peers = allowed_ingress(objects, pod_template_labels(deployments[role][0]))
        canonical = {(json.dumps(p, sort_keys=True), n) for p, n in peers}
        assert canonical == {(json.dumps(storefront, sort_keys=True), port),
                             (json.dumps(monitoring, sort_keys=True), 9090)}, role
    inference = pod_template_labels(deployments["inference"][0])
    peers = allowed_ingress(objects, pod_template_labels(deployments["features"][0]))
    grpc_peers = [p for p, n in peers if n == 50052]
    assert len(grpc_peers) == 1 and set(grpc_peers[0]) == {"podSelector"}
    assert label_selector_matches(grpc_peers[0]["podSelector"], inference)
    assert [p for p, n in peers if n not in {50052, 9090}] == []
    # The store's users may reach the database port; inference (no database) may not.
    users = [pod_template_labels(deployments[r][0]) for r in ("ingestion", "features")]
    training = cronjobs_running(objects, "train")[0][0]
    users.append(training["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])
    egress_5432 = [
        labels for labels in [*users, inference]
        if any(port["port"] == 5432 for policy in policies_selecting(objects, labels, "Egress")
               for rule in policy["spec"].get("egress", []) for port in rule.get("ports", []))
    ]
    assert egress_5432 == users


def test_base_holds_no_secret_values() -> None:
    objects = rendered("base")
    assert not of_kind(objects, "Secret")
    for cm in of_kind(objects, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not re.search(r"PASSWORD|TOKEN|SECRET|DATABASE_URL|_KEY_FILE$", key), key
            assert not CREDENTIALS_IN_URL.search(value), key
    for obj in workloads(objects):
        for c in kustomize.iter_containers(obj):
            for var in c.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET|DATABASE_URL", var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), var["name"]
                assert not CREDENTIALS_IN_URL.search(str(var.get("value", ""))), var["name"]
            assert not CREDENTIALS_IN_URL.search(" ".join(c.get("args", []))), c["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_referenced_configmaps_and_secrets_exist(name: str) -> None:
    """Only `shiftrec-database` and `shiftrec-auth` may be left to the operator (README); dev is
    self-contained."""
    objects = rendered(name)
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    missing = set()
    for obj in workloads(objects):
        for c in kustomize.iter_containers(obj):
            for src in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in src and not src[key].get("optional"):
                        missing.add((kind, src[key]["name"]))
            for var in c.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = var.get("valueFrom", {}).get(key)
                    if ref and not ref.get("optional"):
                        missing.add((kind, ref["name"]))
        for vol in kustomize.pod_spec(obj).get("volumes", []):
            if "persistentVolumeClaim" in vol:
                missing.add(("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]))
    missing -= present
    allowed = {("Secret", "shiftrec-database"), ("Secret", "shiftrec-auth")} if name != "overlays/dev" else set()
    assert missing <= allowed, f"referenced but not rendered: {sorted(missing - allowed)}"


# ----------------------------------------------------------------- services and scaling


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_grpc_services_are_headless_and_route_to_the_server(name: str) -> None:
    objects = rendered(name)
    for role, (dep, container) in role_deployments(objects).items():
        port = listen_port(role, container, objects)
        services = [
            s for s in of_kind(objects, "Service")
            if selects(s["spec"].get("selector", {}), pod_template_labels(dep))
        ]
        assert len(services) == 1, f"{role}: {len(services)} Services select its pods"
        svc = services[0]
        assert svc["spec"].get("clusterIP") == "None", f"{role}: Service is not headless"
        by_name = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
        targets = [by_name.get(p.get("targetPort"), p.get("targetPort", p["port"]))
                   for p in svc["spec"]["ports"]]
        assert port in targets, f"{role}: Service does not reach port {port}"
        # A selector must not catch another role's pods.
        for other, (other_dep, _) in role_deployments(objects).items():
            if other != role:
                assert not selects(svc["spec"]["selector"], pod_template_labels(other_dep))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_inference_reaches_features_through_the_headless_service(name: str) -> None:
    objects = rendered(name)
    deployments = role_deployments(objects)
    _, inference = deployments["inference"]
    target = setting(inference, objects, "features_target")
    m = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", target)
    assert m, f"SHIFTREC_FEATURES_TARGET {target!r} is not dns:///<svc>.<ns>.svc.cluster.local:<port>"
    svc = find(objects, "Service", m.group(1))
    assert svc["metadata"]["namespace"] == m.group(2), "features target names another namespace"
    assert svc["spec"].get("clusterIP") == "None"
    assert int(m.group(3)) in [p["port"] for p in svc["spec"]["ports"]]
    dep, features = deployments["features"]
    assert selects(svc["spec"]["selector"], pod_template_labels(dep))
    port = next(p for p in svc["spec"]["ports"] if p["port"] == int(m.group(3)))
    by_name = {p["name"]: p["containerPort"] for p in features["ports"]}
    assert by_name.get(port["targetPort"], port["targetPort"]) == listen_port(
        "features", features, objects
    )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_service_has_an_hpa_that_owns_replicas(name: str) -> None:
    objects = rendered(name)
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    for role, (dep, _) in role_deployments(objects).items():
        owning = [h for h in hpas if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
                  and h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
        assert len(owning) == 1, f"{role}: {len(owning)} HPAs"
        hpa = owning[0]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"], role
        # Utilization targets are relative to requests: the container must request them.
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                resource = metric["resource"]["name"]
                for c in kustomize.iter_containers(dep, init=False):
                    assert resource in c["resources"]["requests"], role
        assert "replicas" not in dep["spec"], f"{role}: spec.replicas fights the HPA"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pod_disruption_budgets_select_the_services(name: str) -> None:
    objects = rendered(name)
    pdbs = of_kind(objects, "PodDisruptionBudget")
    for role, (dep, _) in role_deployments(objects).items():
        assert any(selects(p["spec"]["selector"]["matchLabels"], pod_template_labels(dep))
                   for p in pdbs), role


# ------------------------------------------------------------------ models and training


def models_claim(obj: Obj, mount_path: str, container: Obj) -> tuple[str, bool]:
    """(PVC claim name, read-only) of what is mounted at mount_path."""
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == mount_path]
    assert len(mounts) == 1, f"{container['name']}: nothing mounted at {mount_path}"
    volume = next(v for v in kustomize.pod_spec(obj)["volumes"] if v["name"] == mounts[0]["name"])
    assert "persistentVolumeClaim" in volume, f"{mount_path} is not a PVC"
    pvc = volume["persistentVolumeClaim"]
    return pvc["claimName"], bool(mounts[0].get("readOnly") or pvc.get("readOnly"))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_inference_reads_the_model_volume_read_only(name: str) -> None:
    objects = rendered(name)
    dep, inference = role_deployments(objects)["inference"]
    model_dir = setting(inference, objects, "model_dir")
    claim, read_only = models_claim(dep, model_dir, inference)
    assert read_only, "inference must mount the models read-only"
    pvc = find(objects, "PersistentVolumeClaim", claim)
    if name != "overlays/dev":  # dev: one node, ReadWriteOnce (see the patch)
        assert "ReadWriteMany" in pvc["spec"]["accessModes"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_training_cronjob_fine_tunes_and_publishes(name: str) -> None:
    objects = rendered(name)
    jobs = cronjobs_running(objects, "train")
    assert len(jobs) == 1
    cronjob, container = jobs[0]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert kustomize.pod_spec(cronjob)["restartPolicy"] in {"Never", "OnFailure"}
    args = argv(container)

    def flag(name: str) -> str:
        assert args.count(name) == 1, f"train needs exactly one {name}: {args}"
        return args[args.index(name) + 1]

    out, init_from = flag("--out"), flag("--init-from")
    # The database URL (a password) comes through the env, never as an argument.
    assert "--database-url" not in args and "SHIFTREC_DATABASE_URL" not in " ".join(args)
    assert [v["name"] for v in database_url_refs(container)] == ["SHIFTREC_DATABASE_URL"]
    # Every $(VAR) the kubelet expands must be defined in the container's env.
    defined = {v["name"] for v in container.get("env", [])}
    for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(args)):
        assert ref in defined, f"$({ref}) is not defined in the container env"
    # It publishes into the volume inference serves from, and starts from what is there.
    claim, read_only = models_claim(cronjob, out, container)
    assert not read_only
    assert init_from == out
    dep, inference = role_deployments(objects)["inference"]
    assert models_claim(dep, setting(inference, objects, "model_dir"), inference)[0] == claim


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_training_args_parse_with_the_cli(name: str) -> None:
    pytest.importorskip("app.training_cli", reason="training CLI not importable here")
    _, container = cronjobs_running(rendered(name), "train")[0]
    parsed = parse_cli(argv(container))
    assert parsed.command == "train"
    assert parsed.init_from == parsed.out


# ----------------------------------------------------------------------- overlays: GPU, dev


def gpu_workloads(objects: list[Obj]) -> dict[str, tuple[Obj, Obj]]:
    out = {"inference": role_deployments(objects)["inference"]}
    out["training"] = cronjobs_running(objects, "train")[0]
    return out


def test_gpu_overlay_schedules_inference_and_training_on_gpus() -> None:
    objects = rendered("overlays/gpu")
    for what, (obj, container) in gpu_workloads(objects).items():
        pod = kustomize.pod_spec(obj)
        assert int(container["resources"]["limits"].get(GPU, 0)) >= 1, what
        assert pod.get("nodeSelector"), f"{what}: no nodeSelector"
        assert any(t.get("key") == GPU and t.get("operator") in {"Exists", "Equal"}
                   for t in pod.get("tolerations", [])), f"{what}: no {GPU} toleration"
    _, inference = gpu_workloads(objects)["inference"]
    assert setting(inference, objects, "inference_device") == "cuda"
    # …and the image it runs carries the CUDA runtime for ONNX Runtime.
    df = parsed_dockerfile()
    runs = [i.value for s in df.dependencies(image_target(inference)) for i in df.stage(s).of("RUN")]
    assert any("onnxruntime-gpu[cuda" in r for r in runs), image_target(inference)
    _, training = gpu_workloads(objects)["training"]
    args = argv(training)
    assert args[args.index("--device") + 1] == "cuda"


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k != "overlays/gpu"])
def test_other_kustomizations_ask_for_no_gpu(name: str) -> None:
    for obj in workloads(rendered(name)):
        pod = kustomize.pod_spec(obj)
        for c in kustomize.iter_containers(obj):
            assert GPU not in c.get("resources", {}).get("limits", {}), obj["metadata"]["name"]
        assert not pod.get("tolerations"), obj["metadata"]["name"]


def _secret(objects: list[Obj], name: str) -> dict[str, str]:
    data = find(objects, "Secret", name).get("data", {})
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_dev_overlay_runs_postgresql_that_the_database_secret_points_at() -> None:
    objects = rendered("overlays/dev")
    postgres = [o for o in workloads(objects) if any(
        kustomize.split_image(c["image"])[0].rsplit("/", 1)[-1] == "postgres"
        for c in kustomize.iter_containers(o))]
    assert len(postgres) == 1, "dev needs exactly one PostgreSQL workload"
    db = postgres[0]
    assert db["kind"] in {"StatefulSet", "Deployment"}
    assert db["spec"].get("replicas", 1) == 1

    url = urlsplit(_secret(objects, "shiftrec-database")["url"])
    assert url.scheme == "postgresql+psycopg"
    host, _, rest = url.hostname.partition(".")
    namespace = rest.removesuffix(".svc.cluster.local")
    svc = find(objects, "Service", host)
    assert svc["metadata"]["namespace"] == namespace == db["metadata"]["namespace"]
    assert selects(svc["spec"]["selector"], pod_template_labels(db))
    assert (url.port or 5432) in [p["port"] for p in svc["spec"]["ports"]]

    # The URL's credentials and database are the ones PostgreSQL is initialised with.
    (container,) = kustomize.iter_containers(db)
    env = {}
    for src in container.get("envFrom", []):
        if "secretRef" in src:
            env.update(_secret(objects, src["secretRef"]["name"]))
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    )


# ------------------------------------------------------------------------------- images


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_image_is_pinned_and_shiftrec_images_have_a_target(name: str) -> None:
    targets = parsed_dockerfile().names()
    for obj in workloads(rendered(name)):
        for c in kustomize.iter_containers(obj):
            _, tag, digest = kustomize.split_image(c["image"])
            assert digest or (tag and tag != "latest"), f"{c['image']} is not pinned"
            if is_shiftrec(c):
                assert image_target(c) in targets, f"no Dockerfile target for {c['image']}"


def shiftrec_targets() -> set[str]:
    """The image targets: every target that sets an ENTRYPOINT and is not a venv/builder."""
    df = parsed_dockerfile()
    return {
        s.name for s in df.stages
        if s.name and df.last(s.name, "ENTRYPOINT") and df.stage(s.name).of("CMD")
        and s.name != "runtime"
    }


def serving_targets() -> set[str]:
    """Targets whose CMD is `serve …` (decided without parsing: this runs at collection)."""
    df = parsed_dockerfile()
    return {t for t in shiftrec_targets() if (df.last(t, "CMD").exec_form() or [""])[0] == "serve"}


def test_image_targets_cover_every_role() -> None:
    df = parsed_dockerfile()
    assert {"training"} <= shiftrec_targets()
    served = {parse_cli(df.last(t, "CMD").exec_form()).service for t in serving_targets()}
    assert served == set(ROLES)
    for role in ROLES:
        assert role in shiftrec_targets(), f"no image target named {role}"


def test_base_images_are_pinned_python() -> None:
    df = parsed_dockerfile()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", requires).groups())
    external = [s.base for s in df.stages if s.base not in df.names()]
    assert external
    for base in external:
        image, tag, _ = kustomize.split_image(base)
        assert tag and tag != "latest", f"{base}: no exact tag"
        assert image.rsplit("/", 1)[-1] == "python", base
        version = re.match(r"(\d+)\.(\d+)\.(\d+)", tag)
        assert version, f"{base}: tag is not an exact X.Y.Z version"
        assert tuple(int(x) for x in version.groups()[:2]) >= minimum, base
    assert len({s.base for s in df.stages if s.base not in df.names()}) == 1, "one base image"


@pytest.mark.parametrize("target", sorted(shiftrec_targets()))
def test_image_runs_shiftrec_as_a_numeric_non_root_user(target: str) -> None:
    df = parsed_dockerfile()
    user = df.last(target, "USER")
    assert user, f"{target}: no USER"
    uid = user.value.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{target}: USER {user.value} (numeric, non-root)"
    assert df.last(target, "ENTRYPOINT").exec_form() == ["shiftrec"]
    cmd = df.last(target, "CMD").exec_form()
    assert cmd, f"{target}: CMD must be exec form"
    parse_cli(cmd)


@pytest.mark.parametrize("target", sorted(serving_targets()))
def test_serving_images_serve_their_role_without_torch(target: str) -> None:
    df = parsed_dockerfile()
    args = parse_cli(df.last(target, "CMD").exec_form())
    assert target.split("-")[0] == args.service
    runs = [i.value for s in df.dependencies(target) for i in df.stage(s).of("RUN")]
    assert not [r for r in runs if re.search(r"\[train\]|\btorch\b", r)], target
    # The dependencies do install the shiftrec wheel (so the scan above looked at something).
    assert any("shiftrec-*.whl" in r for r in runs), target


def test_serving_code_runs_without_the_train_extra() -> None:
    """The serving images lack torch/onnx/matplotlib, the trainer and the local tooling:
    `serve <role>` must not import them."""
    not_served = ["training", "app.training_cli", "app.demo", "app.simulator", "app.processes"]
    train_only = [re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("-", "_") for d in
                  tomllib.loads((REPO / "pyproject.toml").read_text())
                  ["project"]["optional-dependencies"]["train"]]
    code = (
        "import sys\n"
        f"for m in {train_only + not_served!r}: sys.modules[m] = None\n"
        "from app.cli import build_parser\n"
        f"for role in {ROLES!r}:\n"
        "    build_parser().parse_args(['serve', role])\n"
        "    __import__(f'services.{role}.server')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_training_image_installs_the_train_extra() -> None:
    df = parsed_dockerfile()
    runs = [i.value for s in df.dependencies("training") for i in df.stage(s).of("RUN")]
    assert any("[train]" in r for r in runs)


def test_builder_generates_protos_like_the_makefile() -> None:
    df = parsed_dockerfile()
    makefile = (REPO / "Makefile").read_text()
    make_outs = set(re.findall(r"--\w+_out=gen", makefile))
    builder_runs = " ".join(
        i.value for s in df.stages for i in s.of("RUN") if "grpc_tools.protoc" in i.value
    )
    assert make_outs and make_outs <= set(re.findall(r"--\w+_out=gen", builder_runs))
    assert "gen/shiftrec/__init__.py" in builder_runs and "gen/shiftrec/v1/__init__.py" in builder_runs
    assert "pip wheel" in builder_runs


def test_build_context_has_what_the_builder_copies() -> None:
    df = parsed_dockerfile()
    rules = dockerfile.ignore_rules(DOCKERIGNORE)
    copied = set()
    for stage in df.stages:
        for ins in stage.of("COPY"):
            if "from" in ins.flags():
                continue
            words = [w for w in ins.value.split() if not w.startswith("--")]
            for src in words[:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert not dockerfile.is_ignored(src, rules), f"COPY {src}: excluded by the ignore file"
                copied.add(src.strip("/"))
    # What `pip wheel .` needs: the readme and every package directory pyproject includes.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {project["project"]["readme"], "pyproject.toml", "protos"}
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = pattern.rstrip("*")
        if (REPO / top).is_dir():
            needed.add(top)
    assert needed <= copied, f"not copied into the builder: {sorted(needed - copied)}"
    # Local state never enters the context (the builder regenerates gen/).
    for local in (".venv", "gen", "var", ".git", "shared/__pycache__/x.pyc"):
        assert dockerfile.is_ignored(local, rules), local
    assert not dockerfile.is_ignored("app/cli.py", rules)
    for tooling in ("app/demo/run.py", "app/simulator.py", "app/processes.py"):
        assert dockerfile.is_ignored(tooling, rules), tooling
