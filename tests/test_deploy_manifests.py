"""The Kubernetes manifests, nginx config and Dockerfiles are valid and agree with the code.

Offline: manifests are rendered with `kubectl kustomize` where kubectl is
installed (else their files are read as they are) and validated against the
Kubernetes JSON schemas bundled in the kubernetes-validate package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from avatar_server.service.metrics import Metrics
from avatar_server.settings import FLAT_NAMES

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
VARIANTS = {"default": KUBE, "cpu": KUBE / "cpu", "gpu": KUBE / "gpu"}
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())

sys.path.insert(0, str(REPO))
from bench.local_cluster import check_nginx_conf, missing_programs, render_nginx_conf  # noqa: E402


def _files_of(kustomization_dir: Path) -> list[dict[str, Any]]:
    """Without kubectl: every resource file a kustomization names, followed into folders."""
    spec = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = kustomization_dir / entry
        if path.is_dir():
            docs += _files_of(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return _files_of(kustomization_dir)
    result = subprocess.run(
        [kubectl, "kustomize", str(kustomization_dir)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VARIANTS[request.param])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def server_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        doc
        for doc in by_kind(docs, "Deployment")
        if doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name")
        == "avatar-server"
    ]


def config_map(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    return next(
        doc for doc in by_kind(docs, "ConfigMap") if doc["metadata"]["name"].startswith(prefix)
    )["data"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(variant, version: str) -> None:
    _, docs = variant
    monitoring = [
        doc
        for path in sorted((KUBE / "monitoring").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert len(docs) >= 12
    for doc in docs + monitoring:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: "
                f"{'.'.join(map(str, error.path))}: {error.message}"
            )


def test_variants_hold_the_parts_the_issue_names(variant) -> None:
    name, docs = variant
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "Namespace",
    } <= kinds
    names = {doc["metadata"]["name"] for doc in docs}
    assert {"avatar-redis", "avatar-balancer", "avatar-web", "avatar-server-headless"} <= names
    (server,) = server_deployments(docs)
    assert server["metadata"]["name"] == (
        "avatar-server-gpu" if name == "gpu" else "avatar-server-cpu"
    )
    if kubectl_used := shutil.which("kubectl"):
        assert kubectl_used and {doc["metadata"].get("namespace", "avatar") for doc in docs} == {
            "avatar"
        }


def test_servers_probe_the_grpc_health_service_and_outlast_a_turn(variant) -> None:
    _, docs = variant
    settings = config_map(docs, "avatar-server-config")
    turn_deadline = float(settings["AVATAR_TURN_DEADLINE_S"])
    drain_grace = float(settings["AVATAR_SHUTDOWN_GRACE_S"])
    for deployment in server_deployments(docs):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, probe
        assert pod["terminationGracePeriodSeconds"] > drain_grace > turn_deadline
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gpu_variant_requests_a_gpu_and_cpu_variant_does_not(variant) -> None:
    name, docs = variant
    (server,) = server_deployments(docs)
    resources = server["spec"]["template"]["spec"]["containers"][0]["resources"]
    if name == "gpu":
        assert resources["requests"]["nvidia.com/gpu"] == 1 == resources["limits"]["nvidia.com/gpu"]
    else:
        assert "nvidia.com/gpu" not in resources.get("limits", {}) | resources.get("requests", {})


def test_server_env_names_are_real_settings(variant) -> None:
    from avatar_web.settings import WebSettings

    _, docs = variant
    known = {entry.env for entry in FLAT_NAMES.values()}
    known |= {f"AVATAR_WEB_{field.upper()}" for field in WebSettings.model_fields}
    used = set(config_map(docs, "avatar-server-config"))
    for deployment in by_kind(docs, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            used |= {
                env["name"] for env in container.get("env", []) if env["name"].startswith("AVATAR_")
            }
    used -= {
        "AVATAR_BALANCER_PORT",
        "AVATAR_UPSTREAM_SERVERS",
        "AVATAR_RESOLVER",
    }  # nginx template's
    assert used - known == set()


def test_headless_service_and_pdb_select_every_server_pod(variant) -> None:
    _, docs = variant
    service = next(
        doc
        for doc in by_kind(docs, "Service")
        if doc["metadata"]["name"] == "avatar-server-headless"
    )
    assert service["spec"]["clusterIP"] == "None"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    for deployment in server_deployments(docs):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_autoscaler_uses_a_metric_the_service_exports_and_the_adapter_serves(variant) -> None:
    _, docs = variant
    exported = {metric.name for metric in Metrics().registry.collect()}
    adapter = yaml.safe_load(
        yaml.safe_load((KUBE / "monitoring" / "prometheus-adapter-rules.yaml").read_text())["data"][
            "config.yaml"
        ]
    )
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    deployments = {doc["metadata"]["name"] for doc in server_deployments(docs)}
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for metric in hpa["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        assert name in exported and name in served
        assert re.search(rf"\b{name}\{{", adapter["rules"][0]["seriesQuery"])


def test_balancer_renders_the_deploy_nginx_template(variant) -> None:
    _, docs = variant
    template = (REPO / "deploy" / "nginx" / "avatar-grpc.conf.template").read_text()
    assert (KUBE / "base" / "avatar-grpc.conf.template").read_text() == template
    assert config_map(docs, "avatar-balancer-nginx")["avatar-grpc.conf.template"] == template
    balancer = next(
        doc for doc in by_kind(docs, "Deployment") if doc["metadata"]["name"] == "avatar-balancer"
    )
    env = {
        item["name"]: item.get("value", "")
        for item in balancer["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (
        "avatar-server-headless.$(POD_NAMESPACE).svc.cluster.local:50051 resolve"
        in env["AVATAR_UPSTREAM_SERVERS"]
    )
    assert env["AVATAR_RESOLVER"].startswith("resolver ")
    web = next(
        doc for doc in by_kind(docs, "Deployment") if doc["metadata"]["name"] == "avatar-web"
    )
    web_env = {
        item["name"]: item.get("value")
        for item in web["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert web_env["AVATAR_WEB_GRPC_TARGET"] == "avatar-balancer:50051"


def _web_image_env() -> dict[str, str]:
    """The AVATAR_WEB_* values of the web image's ENV instructions (comments left out)."""
    text = (REPO / "deploy" / "docker" / "web.Dockerfile").read_text().replace("\\\n", " ")
    instructions = [line for line in text.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"(AVATAR_WEB_[A-Z_]+)=(\S+)", " ".join(instructions)))


def _web_container_env(docs: list[dict[str, Any]]) -> tuple[dict[str, str], list[dict]]:
    """The web bridge's environment: the image's ENV, then the Deployment's values, with every
    secret reference standing for a made-up secret of a valid length."""
    env = _web_image_env()
    web = next(
        doc for doc in by_kind(docs, "Deployment") if doc["metadata"]["name"] == "avatar-web"
    )
    items = web["spec"]["template"]["spec"]["containers"][0]["env"]
    for item in items:
        env[item["name"]] = item.get("value", f"secret-{item['name'].lower()}-0123456789")
    refs = [item["valueFrom"]["secretKeyRef"] for item in items if "valueFrom" in item]
    return env, refs


def test_the_web_bridge_of_the_manifests_starts_guarded_and_keyed(
    variant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avatar_web.security import is_loopback_host, refuse_unsafe_exposure
    from avatar_web.settings import WebSettings

    _, docs = variant
    env, refs = _web_container_env(docs)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WebSettings()
    refuse_unsafe_exposure(settings)  # would stop the pod at start
    assert not is_loopback_host(settings.host)  # reachable through its Service
    assert settings.access_token is not None and settings.grpc_api_key is not None
    assert refs and not any(ref.get("optional") for ref in refs)  # a missing secret stops it


def test_the_web_image_alone_refuses_to_serve_without_a_token(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from avatar_web.security import UnsafeExposure, refuse_unsafe_exposure
    from avatar_web.settings import WebSettings

    image_env = _web_image_env()
    assert image_env["AVATAR_WEB_HOST"] == "0.0.0.0"
    for name, value in image_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UnsafeExposure):
        refuse_unsafe_exposure(WebSettings())
    monkeypatch.setenv("AVATAR_WEB_ACCESS_TOKEN", "a-token-of-enough-length")
    refuse_unsafe_exposure(WebSettings())


def test_rendered_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    if "nginx" in missing_programs():
        pytest.skip("nginx is not installed (apt-get install -y nginx-light)")
    conf = render_nginx_conf(50999, [50101, 50102, 50103], tmp_path)
    checked = check_nginx_conf(conf)
    assert checked.returncode == 0, checked.stderr
    assert "[warn]" not in checked.stderr
    text = (tmp_path / "avatar-grpc.conf").read_text()
    assert text.count("server 127.0.0.1:501") == 3 and "grpc_pass grpc://avatar_servers" in text
    assert "${" not in text


@pytest.mark.parametrize(
    ("dockerfile", "image", "script"),
    [
        ("server.Dockerfile", "avatar-server", "avatar-server"),
        ("server-gpu.Dockerfile", "avatar-server-gpu", "avatar-server"),
        ("web.Dockerfile", "avatar-web", "avatar-web"),
    ],
)
def test_dockerfiles_run_real_entry_points_on_the_manifests_ports(
    dockerfile: str, image: str, script: str
) -> None:
    text = (REPO / "deploy" / "docker" / dockerfile).read_text()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert f'ENTRYPOINT ["{script}"]' in text and script in scripts
    assert "grpc_tools.protoc -I proto" in text  # the stubs are generated, never copied
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (REPO / copied).exists() or copied == "README.md", copied
    exposed = {
        int(port)
        for line in re.findall(r"^EXPOSE (.+)$", text, flags=re.M)
        for port in line.split()
    }
    docs = render(VARIANTS["gpu" if "gpu" in image else "cpu"])
    for deployment in by_kind(docs, "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        if container["image"].split(":")[0] == image:
            assert {port["containerPort"] for port in container["ports"]} == exposed
            break
    else:
        pytest.fail(f"no Deployment runs {image}")
