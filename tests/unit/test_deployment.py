import os
from typing import Any

import pytest

from sdtask.config import AgentSettings, OperatorSettings
from sdtask.deployment import (
    AGENT_RULES,
    build_agent_access,
    build_deployment,
    build_service,
    deployment_name,
    webui_args,
)

SETTINGS = OperatorSettings(agent_image="registry.example.com/sdtask:1", agent_service_account="sdtask-agent")


def runtime(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "sd15", "namespace": "gen", "uid": "u-1", "generation": 3},
        "spec": {
            "image": "registry.example.com/webui:1",
            "checkpoint": "v1-5.safetensors",
            "placement": {
                "nodeSelector": {"sdtask.io/pool": "pool-a"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "gpusPerPod": 2,
            },
            "output": {"bucket": "out", "credentialsSecret": "s3"},
            "requestTimeoutSeconds": 300,
            **spec,
        },
    }


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_pods_land_on_the_runtime_pool_with_its_gpus() -> None:
    deployment = build_deployment(runtime(), 2, SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["nodeSelector"] == {"sdtask.io/pool": "pool-a"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    webui = containers(deployment)["webui"]
    assert webui["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert webui["resources"]["requests"]["nvidia.com/gpu"] == "2"


def test_the_runtime_owns_what_it_creates() -> None:
    for manifest in (build_deployment(runtime(), 1, SETTINGS), build_service(runtime())):
        owner = manifest["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("SDRuntime", "sd15", "u-1", True)


def test_a_static_runtime_starts_with_its_checkpoint_and_a_dynamic_one_with_none() -> None:
    assert webui_args(runtime()["spec"])[-2:] == ["--ckpt", "/models/v1-5.safetensors"]
    assert "--ckpt" not in webui_args(runtime(dynamicModel=True, args=["--api"])["spec"])
    args = webui_args(runtime(args=["--ckpt", "/x.ckpt"])["spec"])
    assert args[:2] == ["--ckpt", "/x.ckpt"] and args.count("--ckpt") == 1


def flag_value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} given {args.count(flag)} times in {args}"
    return args[args.index(flag) + 1]


def test_the_web_ui_always_gets_the_flags_the_system_needs_and_users_flags_stay() -> None:
    users = ["--xformers", "--api", "--port", "9000", "--listen", "--ckpt-dir=/elsewhere", "--medvram"]
    args = webui_args(runtime(args=users, port=7861, models={"mountPath": "/ckpts"})["spec"])
    # the real Web UI has no API without --api in UI mode, listens on 127.0.0.1 without --listen (the kubelet probes
    # the pod IP), and lists only models/Stable-diffusion and --ckpt-dir
    assert {"--api", "--listen", "--no-download-sd-model"} <= set(args)
    assert all(args.count(flag) == 1 for flag in ("--api", "--listen", "--no-download-sd-model"))
    assert flag_value(args, "--port") == "7861"
    assert flag_value(args, "--ckpt-dir") == "/ckpts"
    assert not any(a.startswith("--ckpt-dir=") for a in args)
    assert flag_value(args, "--ckpt") == "/ckpts/v1-5.safetensors"
    assert args[:2] == ["--xformers", "--medvram"]


def test_probes_use_an_api_route_of_both_ui_and_api_only_modes() -> None:
    webui = containers(build_deployment(runtime(port=7861), 1, SETTINGS))["webui"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert webui[probe]["httpGet"] == {"path": "/sdapi/v1/memory", "port": 7861}
        assert webui[probe]["timeoutSeconds"] >= 5
    startup = webui["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60  # a cold node loads for many minutes


def test_api_auth_comes_from_a_secret_for_the_web_ui_and_the_agent() -> None:
    spec = runtime(apiAuth={"secretName": "webui-auth"})
    pod = build_deployment(spec, 1, SETTINGS)
    webui, agent = containers(pod)["webui"], containers(pod)["agent"]
    assert flag_value(webui["args"], "--api-auth") == "$(SDTASK_WEBUI_API_AUTH)"
    ref = {"secretKeyRef": {"name": "webui-auth", "key": "api-auth"}}
    assert env_of(webui)["SDTASK_WEBUI_API_AUTH"] == ref
    assert env_of(agent)["SDTASK_WEBUI_API_AUTH"] == ref
    # an httpGet probe would get 401 without the credentials, which must not be written into the pod spec
    assert webui["readinessProbe"]["tcpSocket"] == {"port": 7860}
    assert "httpGet" not in webui["readinessProbe"]


def test_a_static_runtime_with_a_model_prefix_fetches_its_checkpoint_before_the_web_ui_starts() -> None:
    pod = build_deployment(runtime(models={"s3Prefix": "s3://models/ckpt/"}), 1, SETTINGS)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["fetch-model"] and init["image"] == "registry.example.com/sdtask:1"
    env = env_of(init)
    assert (env["SDTASK_CHECKPOINT"], env["SDTASK_MODELS_S3_PREFIX"]) == ("v1-5.safetensors", "s3://models/ckpt/")
    assert {"name": "models", "mountPath": env["SDTASK_MODELS_DIR"]} in init["volumeMounts"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    dynamic = build_deployment(runtime(dynamicModel=True, models={"s3Prefix": "s3://m/"}), 1, SETTINGS)
    assert dynamic["spec"]["template"]["spec"]["initContainers"] == []


def test_the_agent_gets_its_settings_and_credentials_from_a_secret_never_inline() -> None:
    agent = containers(build_deployment(runtime(), 1, SETTINGS))["agent"]
    env = env_of(agent)
    assert agent["image"] == "registry.example.com/sdtask:1"
    assert env["SDTASK_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["SDTASK_OUTPUT_BUCKET"] == "out"
    assert env["SDTASK_DYNAMIC_MODEL"] == "false"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}}


def test_the_agent_runs_non_root_read_only_without_capabilities() -> None:
    security = containers(build_deployment(runtime(), 1, SETTINGS))["agent"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_a_replaced_pod_may_finish_its_task() -> None:
    deployment = build_deployment(runtime(), 1, SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 300
    pre_stop = containers(deployment)["webui"]["lifecycle"]["preStop"]["exec"]["command"]
    assert "/var/run/sdtask/busy" in pre_stop[-1]


def test_names_stay_valid_service_names() -> None:
    assert deployment_name("sd15") == "sdruntime-sd15"
    long_one, other = deployment_name("a" * 63), deployment_name("a" * 62 + "b")
    assert len(long_one) <= 63 and long_one != other


def test_agent_access_is_namespaced_and_has_no_wildcards() -> None:
    policy, account, role, binding = build_agent_access("gen", "sdtask-agent")
    assert policy["kind"] == "NetworkPolicy"
    assert (account["kind"], role["kind"], binding["kind"]) == ("ServiceAccount", "Role", "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sdtask-agent", "namespace": "gen"}]
    for rule in AGENT_RULES:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]} in AGENT_RULES


def test_nothing_in_the_cluster_reaches_the_runtime_pods_web_ui() -> None:
    policy = build_agent_access("gen", "sdtask-agent")[0]
    assert policy["metadata"]["namespace"] == "gen"
    assert policy["spec"]["policyTypes"] == ["Ingress"] and policy["spec"]["ingress"] == []  # deny all ingress
    selector = policy["spec"]["podSelector"]["matchLabels"]
    pod_labels = build_deployment(runtime(), 1, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()  # it selects the runtime's pods


def test_the_api_token_is_mounted_in_the_agent_only() -> None:
    deployment = build_deployment(runtime(), 1, SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {name: [m["mountPath"] for m in c["volumeMounts"]] for name, c in containers(deployment).items()}
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert token_dir in mounts["agent"] and token_dir not in mounts["webui"]
    for init in pod.get("initContainers", []):
        assert token_dir not in [m["mountPath"] for m in init["volumeMounts"]]
    token = next(v for v in pod["volumes"] if v["name"] == "agent-token")["projected"]["sources"]
    assert token[0]["serviceAccountToken"] == {"path": "token", "expirationSeconds": 3607}
    assert containers(deployment)["webui"]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_agents_get_the_operators_callback_policy_and_the_link_limits() -> None:
    settings = OperatorSettings(allow_private_callbacks=False, allowed_callback_hosts=frozenset({"hooks.internal"}))
    limited = runtime(agent={"maxLinks": 3, "allowedS3Prefixes": ["s3://in/x/"]})
    env = {e["name"]: e.get("value") for e in containers(build_deployment(limited, 1, settings))["agent"]["env"]}
    assert env["SDTASK_ALLOW_PRIVATE_CALLBACKS"] == "false"
    assert env["SDTASK_ALLOWED_CALLBACK_HOSTS"] == "hooks.internal"
    assert (env["SDTASK_MAX_LINKS"], env["SDTASK_ALLOWED_S3_PREFIXES"]) == ("3", "s3://in/x/")


def test_agents_queue_the_next_generation_in_the_web_ui_unless_the_runtime_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for agent, expected in (({}, True), ({"queueNextGeneration": False}, False)):
        agent_env = containers(build_deployment(runtime(agent=agent), 1, OperatorSettings()))["agent"]["env"]
        for item in agent_env:
            if "value" in item:
                monkeypatch.setenv(item["name"], item["value"])
        assert AgentSettings.from_env().queue_next_generation is expected


# --- the operator-agent contract: what the pod spec sets is what the agent reads ----------------------------------


def kubelet_env(env: list[dict[str, Any]], pod: dict[str, str], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The environment a kubelet gives the container: values as they are, fieldRefs and secretKeyRefs resolved."""
    resolved = {}
    for item in env:
        source = item.get("valueFrom")
        if source is None:
            resolved[item["name"]] = item["value"]
        elif "fieldRef" in source:
            resolved[item["name"]] = pod[source["fieldRef"]["fieldPath"]]
        else:
            ref = source["secretKeyRef"]
            resolved[item["name"]] = secrets[(ref["name"], ref["key"])]
    return resolved


def test_the_agent_reads_back_exactly_what_the_operator_puts_in_its_pod_env(monkeypatch: Any) -> None:
    from sdtask.config import AgentSettings
    from sdtask.deployment import agent_env

    spec = runtime(
        port=7861,
        dynamicModel=True,
        models={"mountPath": "/ckpt", "s3Prefix": "s3://models/sd/"},
        output={"bucket": "out", "endpoint": "http://s3.local:9000", "region": "eu-west-1", "credentialsSecret": "s3"},
        agent={
            "allowPrivateLinks": True,
            "allowedLinkHosts": ["images.example.com", "cdn.example.com"],
            "maxDownloadBytes": 1234,
            "maxLinks": 3,
            "maxTotalDownloadBytes": 5678,
            "allowedS3Prefixes": ["s3://in/a/", "s3://in/b/"],
        },
        apiAuth={"secretName": "webui-auth"},
    )
    operator = OperatorSettings(allow_private_callbacks=True, allowed_callback_hosts=frozenset({"hooks.example.com"}))
    env = kubelet_env(
        agent_env(spec, operator),
        {"metadata.name": "sd15-abc", "metadata.namespace": "gen", "metadata.uid": "7d3c-uid"},
        {("s3", "AWS_ACCESS_KEY_ID"): "AK", ("s3", "AWS_SECRET_ACCESS_KEY"): "SK", ("webui-auth", "api-auth"): "u:p"},
    )
    for name in list(os.environ):
        if name.startswith(("SDTASK_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = AgentSettings.from_env()
    settings.validate()
    read = (
        settings.pod_name,
        settings.pod_uid,
        settings.namespace,
        settings.runtime,
        settings.webui_url,
        settings.webui_api_auth,
        settings.dynamic_model,
        settings.checkpoint,
        settings.models_dir,
        settings.models_s3_prefix,
        settings.output_bucket,
        settings.s3_endpoint,
        settings.s3_region,
        settings.request_timeout_seconds,
        settings.allow_private_links,
        settings.allowed_link_hosts,
        settings.max_download_bytes,
        settings.max_links,
        settings.max_total_download_bytes,
        settings.allowed_s3_prefixes,
        settings.allow_private_callbacks,
        settings.allowed_callback_hosts,
    )
    assert read == (
        "sd15-abc",
        "7d3c-uid",
        "gen",
        "sd15",
        "http://127.0.0.1:7861",
        "u:p",
        True,
        "v1-5.safetensors",
        "/ckpt",
        "s3://models/sd/",
        "out",
        "http://s3.local:9000",
        "eu-west-1",
        300.0,
        True,
        frozenset({"images.example.com", "cdn.example.com"}),
        1234,
        3,
        5678,
        ("s3://in/a/", "s3://in/b/"),
        True,
        frozenset({"hooks.example.com"}),
    )
    assert settings.metrics_port > 0  # the port the pod spec declares as agent-metrics
    # Every variable the operator sets is one the agent reads: another value changes what the agent knows.
    for name, value in env.items():
        if name.startswith("AWS_") and name != "AWS_REGION":
            continue  # boto3 reads the credentials itself
        flipped = {"true": "false", "false": "true"}.get(value)
        other = flipped or (str(int(value) + 1) if value.isdigit() else value + "x")
        monkeypatch.setenv(name, other)
        assert AgentSettings.from_env() != settings, f"{name} is set in the pod but the agent never reads it"
        monkeypatch.setenv(name, value)


def test_an_unconfigured_runtime_gives_the_agent_the_models_defaults() -> None:
    from sdtask.api.runtime import SDRuntimeSpec
    from sdtask.config import AgentSettings
    from sdtask.deployment import agent_env

    minimal = {"metadata": {"name": "rt"}, "spec": {"image": "i", "checkpoint": "c", "output": {"bucket": "outputs"}}}
    env = {e["name"]: e["value"] for e in agent_env(minimal) if "value" in e}
    defaults = SDRuntimeSpec.model_validate(minimal["spec"])
    assert env["SDTASK_WEBUI_URL"] == f"http://127.0.0.1:{defaults.port}"
    assert env["SDTASK_MODELS_DIR"] == defaults.models.mount_path
    assert float(env["SDTASK_REQUEST_TIMEOUT_SECONDS"]) == defaults.request_timeout_seconds
    assert int(env["SDTASK_MAX_DOWNLOAD_BYTES"]) == defaults.agent.max_download_bytes
    assert AgentSettings(pod_name="p", namespace="n", runtime="rt").webui_url == env["SDTASK_WEBUI_URL"]
