"""The Helm chart: it lints and renders, ships the repository's CRDs unchanged, runs the operator non-root on a
read-only root filesystem, and its RBAC is least privilege, proven on a real API server: the operator's ServiceAccount
may make every call the operator makes and nothing else that matters, and the operator really runs under it.

helm is built once from the Go module proxy into the cache (sdtask.devcluster.helm; SDTASK_HELM names another one).
Fixtures (tests/conftest.py): `stack` (the local control plane), `kube_api` (admin ApiClient, CRDs installed) and
`namespace` (a fresh namespace).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sdtask.api import GROUP, VERSION
from sdtask.cli import parse_command_line
from sdtask.clients.kube import is_not_found
from sdtask.config import OperatorSettings
from sdtask.constants import LABEL_MANAGED_BY, LABEL_RUNTIME
from sdtask.deployment import AGENT_RULES, AGENT_USER_ID, build_agent_access, deployment_name
from sdtask.devcluster.helm import HelmError, ensure_helm, run_helm
from sdtask.devcluster.processes import ManagedProcess, free_port
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.waiting import wait_for
from sdtask.modelreport import model_lease

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "sdtask-operator"
EXAMPLES = REPO_ROOT / "examples"
RELEASE = "sdtask-operator"  # the release's full name is then sdtask-operator as well
RBAC_GROUP = "rbac.authorization.k8s.io"

# Every call the operator makes, with what makes it: (verb, API group, resource, subresource).
# Read from sdtask/clients/kube.py, sdtask/controller/*.py and kopf 1.45 (kopf/_cogs/clients, _core/reactor).
OPERATOR_CALLS: list[tuple[str, str, str, str]] = [
    ("list", GROUP, "sdtasks", ""),  # kopf: task index, task events
    ("watch", GROUP, "sdtasks", ""),
    ("get", GROUP, "sdtasks", ""),  # Kube.get_task before dispatch, requeue, housekeeping
    ("delete", GROUP, "sdtasks", ""),  # Kube.delete_task: ttlSecondsAfterFinished
    ("patch", GROUP, "sdtasks", "status"),  # Kube.patch_task_status
    ("list", GROUP, "sdruntimes", ""),  # kopf: runtime index, runtime daemons
    ("watch", GROUP, "sdruntimes", ""),
    ("patch", GROUP, "sdruntimes", ""),  # kopf: the daemons' finalizer
    ("patch", GROUP, "sdruntimes", "status"),  # Kube.patch_runtime_status
    ("list", "", "pods", ""),  # kopf: pod index
    ("watch", "", "pods", ""),
    ("patch", "", "pods", ""),  # Kube.annotate_pod: pod-deletion-cost
    ("list", "coordination.k8s.io", "leases", ""),  # kopf: the agents' model Leases (model index)
    ("watch", "coordination.k8s.io", "leases", ""),
    ("list", "apps", "deployments", ""),  # kopf: deployment index
    ("watch", "apps", "deployments", ""),
    ("create", "apps", "deployments", ""),  # Kube.apply: server-side apply of a Deployment not there yet
    ("patch", "apps", "deployments", ""),
    ("delete", "apps", "deployments", ""),  # Kube.delete_workloads: a deleted runtime's GPUs freed at once
    ("create", "", "services", ""),
    ("patch", "", "services", ""),
    ("delete", "", "services", ""),
    ("create", "", "serviceaccounts", ""),  # the agents' ServiceAccount (build_agent_access)
    ("patch", "", "serviceaccounts", ""),
    ("create", RBAC_GROUP, "roles", ""),  # the agents' Role
    ("patch", RBAC_GROUP, "roles", ""),
    ("create", RBAC_GROUP, "rolebindings", ""),
    ("patch", RBAC_GROUP, "rolebindings", ""),
    ("create", "networking.k8s.io", "networkpolicies", ""),  # the runtime pods' NetworkPolicy (build_agent_access)
    ("patch", "networking.k8s.io", "networkpolicies", ""),
    ("get", "", "secrets", ""),  # Kube.read_secret_value: a callback's secretRef
    ("create", "", "events", ""),  # Kube.post_event and kopf's events
]
# Cluster-scoped calls of kopf: CRD observation always; namespace observation when it serves a list of namespaces.
CRD_CALLS = [
    ("list", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", ""),
]
NAMESPACE_CALLS = [("list", "", "namespaces", ""), ("watch", "", "namespaces", "")]
# What a compromised or buggy operator must not be able to do, in the namespaces it serves.
FORBIDDEN_CALLS: list[tuple[str, str, str, str]] = [
    ("list", "", "secrets", ""),
    ("watch", "", "secrets", ""),
    ("create", "", "pods", ""),
    ("delete", "", "pods", ""),
    ("create", "", "pods", "exec"),
    ("update", "apps", "deployments", ""),
    ("delete", "apps", "replicasets", ""),
    ("patch", "apps", "deployments", "scale"),
    ("create", GROUP, "sdtasks", ""),
    ("delete", GROUP, "sdruntimes", ""),
    ("update", GROUP, "sdtasks", ""),
    ("create", "", "serviceaccounts", "token"),
    ("impersonate", "", "serviceaccounts", ""),
    ("escalate", RBAC_GROUP, "roles", ""),
    ("bind", RBAC_GROUP, "roles", ""),
    ("bind", RBAC_GROUP, "clusterroles", ""),
    ("delete", RBAC_GROUP, "roles", ""),
    ("create", "", "configmaps", ""),
    ("get", "", "pods", ""),  # nothing reads a pod one by one (the agents, which did, no longer touch pods)
]
FORBIDDEN_CLUSTER_CALLS: list[tuple[str, str, str, str]] = [
    ("get", "", "nodes", ""),
    ("create", RBAC_GROUP, "clusterroles", ""),
    ("create", RBAC_GROUP, "clusterrolebindings", ""),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("patch", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("delete", "", "namespaces", ""),
    ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""),
]


def agent_rule_calls() -> list[tuple[str, str, str, str]]:
    """Each permission of the agents' Role: the operator must hold it to be allowed to grant it."""
    calls = []
    for rule in AGENT_RULES:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                name, _, subresource = resource.partition("/")
                calls += [(verb, group, name, subresource) for verb in rule["verbs"]]
    return calls


# --- rendering ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def values_file(home: Path, values: dict[str, Any]) -> Path:
    text = json.dumps(values, sort_keys=True)  # JSON is YAML
    path = home / f"values-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    path.write_text(text)
    return path


def render(
    helm: Path, home: Path, values: dict[str, Any] | None = None, namespace: str = "sdtask-system"
) -> list[dict[str, Any]]:
    out = run_helm(
        ["template", RELEASE, str(CHART), "--namespace", namespace, "-f", str(values_file(home, values or {}))],
        home=home,
        helm=helm,
    )
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def the_deployment(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(manifests, "Deployment")
    return deployment


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def example_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())["spec"]
    return spec


FULL_VALUES: dict[str, Any] = {
    "watchNamespaces": ["sd-prod", "sd-staging"],
    "operator": {"allowPrivateCallbacks": True, "allowedCallbackHosts": ["hooks.example.com"]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "runtimes": [{"name": "sdruntime", "spec": example_spec("runtime-static.yaml")}],
    "karpenter": {
        "enabled": True,
        "pools": [
            {
                "name": "pool-a",
                "requirements": [{"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["g5"]}],
                "gpuLimit": 8,
            }
        ],
    },
}


def test_helm_lint_passes_with_default_and_full_values(helm: Path, helm_home: Path) -> None:
    for values in ({}, FULL_VALUES):
        out = run_helm(
            ["lint", "--strict", str(CHART), "-f", str(values_file(helm_home, values))], home=helm_home, helm=helm
        )
        assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_values_schema_refuses_a_misspelt_key(helm: Path, helm_home: Path) -> None:
    with pytest.raises(HelmError, match="watchNamespace"):
        render(helm, helm_home, {"watchNamespace": ["sd-prod"]})


def test_chart_crds_are_the_repository_crds_byte_for_byte() -> None:
    repo = {p.name: p.read_bytes() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo, "no CRDs in crds/"
    assert sorted(chart) == sorted(repo), "charts/sdtask-operator/crds/ must hold exactly the files of crds/"
    drifted = [name for name in repo if chart[name] != repo[name]]
    assert not drifted, f"chart CRDs differ from crds/ (run `make crds`, which writes both): {drifted}"


def test_default_render_is_one_operator_replaced_by_recreate(helm: Path, helm_home: Path) -> None:
    manifests = render(helm, helm_home)
    assert sorted(m["kind"] for m in manifests) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",  # the agents' model Leases, the operator's writes
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicyBinding",
    ]
    deployment = the_deployment(manifests)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert all(m["metadata"].get("namespace") in (None, "sdtask-system") for m in manifests)


def test_operator_container_command_and_env_configure_the_operator(
    helm: Path, helm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "image": {"repository": "registry.example.com/sdtask-operator", "tag": "1.2.3"},
        "watchNamespaces": ["sd-prod", "sd-staging"],
        "operator": {
            "allowPrivateCallbacks": True,
            "allowedCallbackHosts": ["hooks.example.com"],
            "tuning": {"affinityWindow": 4, "retryBackoffSeconds": 2.5},
        },
        "liveness": {"port": 9091},
        "metrics": {"port": 9090},
    }
    manifests = render(helm, helm_home, values)
    pod = the_deployment(manifests)["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    command, params = parse_command_line(container["args"])  # the image's ENTRYPOINT is `sdtask`
    assert command == "operator"
    assert params["liveness"] == "http://0.0.0.0:9091/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "healthz": 9091}
    (service,) = of_kind(manifests, "Service")
    assert service["spec"]["ports"][0]["port"] == 9090 and service["spec"]["ports"][0]["targetPort"] == "metrics"

    for name in [n for n in os.environ if n.startswith("SDTASK_")]:
        monkeypatch.delenv(name)
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings.from_env()
    assert settings.agent_image == "registry.example.com/sdtask-operator:1.2.3"  # the agent defaults to this image
    assert settings.agent_service_account == "sdtask-agent"
    assert settings.namespaces == ("sd-prod", "sd-staging")
    assert settings.allow_private_callbacks is True
    assert settings.allowed_callback_hosts == frozenset({"hooks.example.com"})
    assert settings.metrics_port == 9090
    assert settings.affinity_window == 4 and settings.retry_backoff_seconds == 2.5
    assert settings.starvation_limit_seconds == OperatorSettings.starvation_limit_seconds  # unset: the default


def test_no_rbac_rule_has_a_wildcard_or_escalating_verb(helm: Path, helm_home: Path) -> None:
    for values in ({}, {"watchNamespaces": ["sd-prod"]}):
        roles = [m for m in render(helm, helm_home, values) if m["kind"] in ("Role", "ClusterRole")]
        assert roles
        for role in roles:
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert not any("*" in item for item in rule.get(field, [])), (role["metadata"]["name"], rule)
                assert "nonResourceURLs" not in rule
                assert not {"escalate", "bind", "impersonate", "update", "deletecollection"} & set(rule["verbs"]), rule


def test_namespaced_mode_binds_the_namespaced_rules_only_in_the_listed_namespaces(helm: Path, helm_home: Path) -> None:
    manifests = render(helm, helm_home, {"watchNamespaces": ["sd-prod", "sd-staging", "sd-prod"]})
    bindings = of_kind(manifests, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["sd-prod", "sd-staging"]
    (cluster_binding,) = of_kind(manifests, "ClusterRoleBinding")
    cluster_role = next(
        r for r in of_kind(manifests, "ClusterRole") if r["metadata"]["name"] == cluster_binding["roleRef"]["name"]
    )
    cluster_resources = {res for rule in cluster_role["rules"] for res in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}  # nothing namespaced cluster-wide


def test_every_container_runs_non_root_on_a_read_only_root_filesystem(helm: Path, helm_home: Path) -> None:
    for manifest in render(helm, helm_home, FULL_VALUES):
        template = manifest.get("spec", {}).get("template", {}).get("spec")
        if manifest["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job") or not template:
            continue
        pod_security = template["securityContext"]
        assert pod_security["runAsNonRoot"] is True
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
        writable = {v["name"] for v in template.get("volumes", []) if "emptyDir" in v}
        for container in template["containers"] + template.get("initContainers", []):
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["runAsUser"] == AGENT_USER_ID == pod_security["runAsUser"]  # the image's user, too
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in writable, "/tmp must be an emptyDir: the only writable path"


def test_karpenter_node_pools_taint_and_label_gpu_nodes(helm: Path, helm_home: Path) -> None:
    assert not of_kind(render(helm, helm_home), "NodePool"), "Karpenter is off by default"
    manifests = render(helm, helm_home, FULL_VALUES)
    (pool,) = of_kind(manifests, "NodePool")
    assert pool["apiVersion"] == "karpenter.sh/v1"
    assert pool["metadata"]["name"] == "pool-a"
    template = pool["spec"]["template"]
    assert template["metadata"]["labels"]["sdtask.io/pool"] == "pool-a"
    assert {"key": "nvidia.com/gpu", "effect": "NoSchedule"} in template["spec"]["taints"]
    assert template["spec"]["requirements"] == FULL_VALUES["karpenter"]["pools"][0]["requirements"]
    assert template["spec"]["nodeClassRef"] == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}
    assert pool["spec"]["limits"] == {"nvidia.com/gpu": 8}
    # The example runtime lands on that pool: it selects the pool label and tolerates the taint.
    (runtime,) = of_kind(manifests, "SDRuntime")
    placement = runtime["spec"]["placement"]
    assert placement["nodeSelector"]["sdtask.io/pool"] == "pool-a"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in placement["tolerations"])


# --- on the API server ----------------------------------------------------------------------------------------------
def test_runtimes_from_values_are_sdruntimes_the_api_server_accepts(
    helm: Path, helm_home: Path, kube_api: client.ApiClient, namespace: str
) -> None:
    values = {
        "runtimes": [
            {"name": "sdruntime", "labels": {"team": "imaging"}, "spec": example_spec("runtime-static.yaml")},
            {"name": "sdruntime-dynamic", "namespace": namespace, "spec": example_spec("runtime-dynamic.yaml")},
        ]
    }
    runtimes = of_kind(render(helm, helm_home, values, namespace=namespace), "SDRuntime")
    assert [r["metadata"]["name"] for r in runtimes] == ["sdruntime", "sdruntime-dynamic"]
    assert runtimes[0]["metadata"]["labels"]["team"] == "imaging"
    custom = client.CustomObjectsApi(kube_api)
    for runtime in runtimes:
        assert runtime["apiVersion"] == f"{GROUP}/{VERSION}"
        assert runtime["metadata"]["namespace"] == namespace
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "sdruntimes", runtime, dry_run="All", field_validation="Strict"
        )
        assert created["spec"]["image"] == runtime["spec"]["image"]

    # A runtime the CRD refuses is refused by the API server, so `helm install` fails rather than dropping it: here a
    # static runtime without its checkpoint.
    broken = dict(example_spec("runtime-static.yaml"))
    del broken["checkpoint"]
    (bad,) = of_kind(
        render(helm, helm_home, {"runtimes": [{"name": "broken", "spec": broken}]}, namespace), "SDRuntime"
    )
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "sdruntimes", bad, dry_run="All")
    assert refused.value.status == 422 and "checkpoint" in refused.value.body


class Release:
    """The chart installed with helm into a namespace of the local stack; uninstalled (cluster objects too) after."""

    def __init__(self, helm: Path, home: Path, stack: DevStack, namespace: str, values: dict[str, Any]) -> None:
        self.helm, self.home, self.stack, self.namespace = helm, home, stack, namespace
        self.notes = run_helm(
            [
                "install",
                RELEASE,
                str(CHART),
                "--namespace",
                namespace,
                "--skip-crds",  # the session's CRDs are installed already (kube_api)
                "-f",
                str(values_file(home, values)),
            ],
            home=home,
            helm=helm,
            kubeconfig=stack.kubeconfig,
        )
        self.service_account = RELEASE

    def uninstall(self) -> None:
        run_helm(
            ["uninstall", RELEASE, "--namespace", self.namespace],
            home=self.home,
            helm=self.helm,
            kubeconfig=self.stack.kubeconfig,
        )


@pytest.fixture
def namespaced_release(
    helm: Path, helm_home: Path, stack: DevStack, kube_api: client.ApiClient, namespace: str
) -> Iterator[Release]:
    release = Release(helm, helm_home, stack, namespace, {"watchNamespaces": [namespace]})
    yield release
    release.uninstall()


@pytest.fixture
def clusterwide_release(
    helm: Path, helm_home: Path, stack: DevStack, kube_api: client.ApiClient, namespace: str
) -> Iterator[Release]:
    release = Release(helm, helm_home, stack, namespace, {})
    yield release
    release.uninstall()


def allowed(
    kube_api: client.ApiClient, release: Release, call: tuple[str, str, str, str], namespace: str | None
) -> bool:
    """SubjectAccessReview: may the release's ServiceAccount make `call` in `namespace` (None: cluster-wide)?"""
    verb, group, resource, subresource = call
    user_namespace = release.namespace
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{user_namespace}:{release.service_account}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{user_namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "namespace": namespace or "",
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                },
            },
        }
    )
    return bool(review.status.allowed)


def denied_calls(
    kube_api: client.ApiClient, release: Release, calls: list[tuple[str, str, str, str]], namespace: str | None
) -> list[tuple[str, str, str, str]]:
    return [call for call in calls if not allowed(kube_api, release, call, namespace)]


def granted_calls(
    kube_api: client.ApiClient, release: Release, calls: list[tuple[str, str, str, str]], namespace: str | None
) -> list[tuple[str, str, str, str]]:
    return [call for call in calls if allowed(kube_api, release, call, namespace)]


def test_namespaced_release_grants_the_operator_calls_in_its_namespaces_only(
    kube_api: client.ApiClient, namespaced_release: Release, namespace: str
) -> None:
    release = namespaced_release
    assert f"It serves the namespaces: {namespace}." in release.notes
    assert f"kubectl -n {namespace} get sdtasks --watch" in release.notes
    assert denied_calls(kube_api, release, OPERATOR_CALLS + agent_rule_calls(), namespace) == []
    assert denied_calls(kube_api, release, CRD_CALLS + NAMESPACE_CALLS, None) == []
    assert granted_calls(kube_api, release, FORBIDDEN_CALLS, namespace) == []
    assert granted_calls(kube_api, release, FORBIDDEN_CLUSTER_CALLS, None) == []
    # Nothing namespaced anywhere else: not even reading a Secret, in another namespace or cluster-wide.
    assert granted_calls(kube_api, release, OPERATOR_CALLS, "default") == []
    assert not allowed(kube_api, release, ("get", "", "secrets", ""), None)


def test_clusterwide_release_grants_the_operator_calls_everywhere_and_no_more(
    kube_api: client.ApiClient, clusterwide_release: Release
) -> None:
    release = clusterwide_release
    assert "It serves SDTasks and SDRuntimes in every namespace." in release.notes
    for where in ("some-team", None):
        assert denied_calls(kube_api, release, OPERATOR_CALLS + agent_rule_calls(), where) == []
        assert granted_calls(kube_api, release, FORBIDDEN_CALLS, where) == []
    assert denied_calls(kube_api, release, CRD_CALLS, None) == []
    assert granted_calls(kube_api, release, FORBIDDEN_CLUSTER_CALLS + NAMESPACE_CALLS, None) == []


# --- the operator itself under the chart's RBAC ----------------------------------------------------------------------
def service_account_kubeconfig(kube_api: client.ApiClient, stack: DevStack, release: Release, path: Path) -> Path:
    """A kubeconfig that authenticates as the release's ServiceAccount, with a token from the TokenRequest API."""
    token = client.CoreV1Api(kube_api).create_namespaced_service_account_token(
        release.service_account, release.namespace, {"spec": {"expirationSeconds": 600}}
    )
    admin = yaml.safe_load(stack.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token.status.token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def test_operator_runs_with_exactly_the_chart_permissions(
    kube_api: client.ApiClient, stack: DevStack, namespaced_release: Release, namespace: str, tmp_path: Path
) -> None:
    """The real operator, authenticated as the chart's ServiceAccount, builds a runtime and queues a task, unrefused."""
    kubeconfig = service_account_kubeconfig(kube_api, stack, namespaced_release, tmp_path / "operator.kubeconfig")
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    operator = ManagedProcess(
        "operator",
        [sys.executable, "-m", "sdtask.cli", "operator", "--liveness", liveness],
        tmp_path / "operator.log",
        env={"KUBECONFIG": str(kubeconfig), "SDTASK_NAMESPACES": namespace, "SDTASK_METRICS_PORT": str(free_port())},
    ).start()
    custom = client.CustomObjectsApi(kube_api)
    try:
        operator.wait_until(lambda: _healthy(liveness), 60, "live (kopf liveness endpoint)")
        runtime = yaml.safe_load((EXAMPLES / "runtime-static.yaml").read_text())
        task = yaml.safe_load((EXAMPLES / "task-image-to-image.yaml").read_text())
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "sdruntimes", runtime)
        name = runtime["metadata"]["name"]
        apps, core, rbac = (
            client.AppsV1Api(kube_api),
            client.CoreV1Api(kube_api),
            client.RbacAuthorizationV1Api(kube_api),
        )

        def workloads() -> bool:
            try:
                apps.read_namespaced_deployment(deployment_name(name), namespace)  # create + patch (server-side apply)
                core.read_namespaced_service(deployment_name(name), namespace)
                core.read_namespaced_service_account("sdtask-agent", namespace)
                rbac.read_namespaced_role_binding("sdtask-agent", namespace)
                role = rbac.read_namespaced_role("sdtask-agent", namespace)  # granted only what the operator holds
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
            return len(role.rules) == len(AGENT_RULES)

        wait_for(workloads, 30, "the runtime's Deployment, Service and agent access")
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "sdtasks", task)

        def queued() -> dict[str, Any] | None:
            body: dict[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "sdtasks", task["metadata"]["name"]
            )
            status = body.get("status") or {}
            return body if status.get("phase") and status.get("runtime") == name else None

        wait_for(queued, 30, "the task admitted onto the runtime (status patched)")
        # A task for a runtime that doesn't exist fails at once with an Event: the operator's RBAC lets it post them.
        stray = json.loads(json.dumps(task))
        stray["metadata"]["name"] = "stray"
        stray["spec"]["task"]["metadata"]["runtime"] = "no-such-runtime"
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "sdtasks", stray)

        def rejection_events() -> list[Any]:
            events = core.list_namespaced_event(namespace).items
            return [e for e in events if e.reason == "UnknownRuntime" and e.involved_object.name == "stray"]

        wait_for(rejection_events, 30, "the UnknownRuntime Event the operator posts")

        def runtime_reconciled() -> bool:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "sdruntimes", name)
            return bool(body["metadata"].get("finalizers")) and bool(body.get("status"))  # kopf's patch, our status

        wait_for(runtime_reconciled, 30, "the runtime's finalizer and status")

        # Deleting the runtime: kopf stops its daemon and removes the finalizer (patch), so the runtime goes away.
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "sdruntimes", name)

        def runtime_gone() -> bool:
            try:
                custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "sdruntimes", name)
            except ApiException as error:
                return is_not_found(error)
            return False

        wait_for(runtime_gone, 30, "the runtime deleted (finalizer released)")

        def deployment_gone() -> bool:  # the operator deletes it at once, freeing the GPUs
            try:
                apps.read_namespaced_deployment(deployment_name(name), namespace)
            except ApiException as error:
                return is_not_found(error)
            return False

        wait_for(deployment_gone, 30, "the runtime's Deployment deleted")
    finally:
        operator.stop()
    log = (tmp_path / "operator.log").read_text(errors="replace")
    # kubernetes-client errors say "(403)" and "Forbidden"; kopf says "forbidden" or, when it falls back to a degraded
    # mode (no CRD or namespace observation), "Not enough permissions".
    signs = ("(403)", "Forbidden", "forbidden", "Not enough permissions")
    refusals = [line for line in log.splitlines() if any(sign in line for sign in signs)]
    assert not refusals, "the operator was refused under the chart's RBAC:\n" + "\n".join(refusals[:20])


# --- admission policies: what RBAC can't narrow ----------------------------------------------------------------------
def _token_client(kube_api: client.ApiClient, namespace: str, account: str, bound_pod: Any = None) -> client.CoreV1Api:
    """A CoreV1Api authenticated as `account` (a TokenRequest token; bound to a pod like the kubelet's when given)."""
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if bound_pod is not None:
        spec["boundObjectRef"] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "name": bound_pod.metadata.name,
            "uid": bound_pod.metadata.uid,
        }
    token = client.CoreV1Api(kube_api).create_namespaced_service_account_token(account, namespace, {"spec": spec})
    configuration = copy.copy(kube_api.configuration)
    configuration.api_key = {"BearerToken": f"Bearer {token.status.token}"}
    # The copy would otherwise put the kubeconfig's admin token back before every request, and send its certificate.
    configuration.refresh_api_key_hook = None
    configuration.cert_file = configuration.key_file = None
    return client.CoreV1Api(client.ApiClient(configuration))


def _refusal(call: Callable[[], object]) -> str:
    with pytest.raises(ApiException) as caught:
        call()
    assert caught.value.status in (403, 422), caught.value.body
    return str(caught.value.body)


def _refused_once_enforced(call: Callable[[], object]) -> str:
    """The API server enforces a new ValidatingAdmissionPolicy (and its binding) only once its informers have seen
    both: wait for the first refusal instead of racing that."""

    def refused() -> str | None:
        try:
            call()
        except ApiException as error:
            assert error.status in (403, 422), error.body
            return str(error.body)
        return None

    return wait_for(refused, 30, "the admission policy to be enforced", interval=0.2)


def test_admission_policies_narrow_what_agents_and_the_operator_may_write(
    kube_api: client.ApiClient, clusterwide_release: Release, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    for manifest in build_agent_access(namespace, "sdtask-agent")[1:]:  # ServiceAccount, Role, RoleBinding
        kind = manifest["kind"]
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(namespace, manifest)
        elif kind == "Role":
            client.RbacAuthorizationV1Api(kube_api).create_namespaced_role(namespace, manifest)
        else:
            client.RbacAuthorizationV1Api(kube_api).create_namespaced_role_binding(namespace, manifest)
    managed = {LABEL_MANAGED_BY: "sdtask-operator", LABEL_RUNTIME: "r"}

    def pod(name: str, labels: dict[str, str]) -> Any:
        return core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "serviceAccountName": "sdtask-agent",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "webui", "image": "registry.example.com/webui:1"}],
                },
            },
        )

    mine, other, foreign = pod("runtime-a", managed), pod("runtime-b", managed), pod("someone-else", {"app": "db"})
    agent = _token_client(kube_api, namespace, "sdtask-agent", bound_pod=mine)
    agent_leases = client.CoordinationV1Api(agent.api_client)

    def annotate(api: client.CoreV1Api, name: str, annotations: dict[str, str]) -> Any:
        return api.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})

    def report(pod: Any, model: str, **changes: Any) -> Any:
        """What the agent does (Execution.report_model): server-side apply of its pod's model Lease."""
        lease = model_lease(namespace, pod.metadata.name, pod.metadata.uid, "r", model)
        lease["metadata"].update(changes)
        return agent_leases.patch_namespaced_lease(
            lease["metadata"]["name"],
            namespace,
            lease,
            field_manager="sdtask-agent",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    # No pod write at all, by RBAC: not the model annotation it used to write, not the image.
    image = {"spec": {"containers": [{"name": "webui", "image": "evil.example.com/miner:1"}]}}
    pod_calls: list[Callable[[], Any]] = [
        lambda: annotate(agent, "runtime-a", {"sdtask.io/model": "v1-5.safetensors"}),
        lambda: agent.patch_namespaced_pod("runtime-a", namespace, image),
        lambda: agent.read_namespaced_pod("runtime-a", namespace),
    ]
    for refused in pod_calls:
        with pytest.raises(ApiException) as caught:
            refused()
        assert caught.value.status == 403, caught.value.body
    report(mine, "v1-5.safetensors")  # its own pod's Lease: created, then updated
    report(mine, "dreamshaper.safetensors")
    stored = client.CoordinationV1Api(kube_api).read_namespaced_lease("runtime-a", namespace)
    assert stored.metadata.annotations == {"sdtask.io/model": "dreamshaper.safetensors"}
    assert [(o.kind, o.name, o.uid) for o in stored.metadata.owner_references] == [
        ("Pod", "runtime-a", mine.metadata.uid)
    ]
    # a harmless write probes for enforcement first: nothing else may get through before the policy is in force
    # (a new value each time: once a value got through, writing it again changes nothing and would be allowed)
    assert "only the Lease of its own pod" in _refused_once_enforced(lambda: report(other, uuid.uuid4().hex))
    unowned: dict[str, Any] = {"ownerReferences": []}
    assert "owned by its pod" in _refusal(lambda: report(mine, "x", **unowned))
    unlabelled = {"labels": {"app": "db"}}
    assert "only its model Lease" in _refusal(lambda: report(mine, "x", **unlabelled))
    # someone else's Lease in the namespace (another controller's leader election): not the agent's to take over
    client.CoordinationV1Api(kube_api).create_namespaced_lease(
        namespace, {"metadata": {"name": "runtime-c"}, "spec": {"holderIdentity": "leader-1"}}
    )
    third = pod("runtime-c", managed)
    third_agent = client.CoordinationV1Api(
        _token_client(kube_api, namespace, "sdtask-agent", bound_pod=third).api_client
    )
    lease = model_lease(namespace, "runtime-c", third.metadata.uid, "r", "x")
    with pytest.raises(ApiException) as caught:
        third_agent.patch_namespaced_lease(
            "runtime-c",
            namespace,
            lease,
            field_manager="sdtask-agent",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    assert caught.value.status in (403, 422) and "only its model Lease" in str(caught.value.body)

    operator = _token_client(kube_api, namespace, clusterwide_release.service_account)
    cost = {"controller.kubernetes.io/pod-deletion-cost": "-100"}
    annotate(operator, "runtime-b", cost)  # a pod it manages: allowed
    assert "only what it manages" in _refused_once_enforced(lambda: annotate(operator, "someone-else", cost))
    assert "only a pod's annotations" in _refusal(lambda: operator.patch_namespaced_pod("runtime-b", namespace, image))
    assert core.read_namespaced_pod("runtime-a", namespace).spec.containers[0].image == "registry.example.com/webui:1"
    assert foreign.metadata.annotations is None and other.metadata.name == "runtime-b"
    assert core.read_namespaced_pod("runtime-a", namespace).metadata.annotations is None  # nothing of the agent's
