"""Over a thousand generated malformed or hostile tasks against the real API server, operator and agents.

Each one is refused by the API server or ends Failed with a reason and a message (none stays unfinished); the operator
and the agents keep running (same processes throughout), and good tasks submitted among them all succeed. The runtimes
keep the default link policy: every hostile link must be refused by the agent, never fetched.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from sdtask.api import GROUP, MAX_CONTENT_BYTES, VERSION
from sdtask.api.task import MAX_PROMPT_CHARS, TASK_TYPES
from sdtask.devcluster.waiting import wait_for
from sdtask.nesting import MAX_CONTENT_DEPTH

from .conftest import Cluster

MODEL = "v1-5-pruned-emaonly.safetensors"
RUNTIMES = {"hostile-a": "pool-a", "hostile-b": "pool-b"}
EXAMPLES = 1100
GOOD_EVERY = 50  # a good task after every this many hostile ones

# Links no agent with the default policy may fetch: loopback, private, link-local (cloud metadata), mapped and
# embedded forms, names resolving to loopback, credentials in the URL, numeric spellings of 127.0.0.1.
HOSTILE_LINKS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.0.0.1/cat.png",
    "http://192.168.1.1/cat.png",
    "http://172.16.5.4:8080/cat.png",
    "http://127.0.0.1:7860/sdapi/v1/options",
    "http://[::1]:7860/internal",
    "http://[::ffff:127.0.0.1]:7860/internal",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[2002:7f00:1::1]/cat.png",
    "http://[64:ff9b::a9fe:a9fe]/latest/",
    "http://localhost:7860/sdapi/v1/options",
    "http://vm/cat.png",
    "http://user:secret@127.0.0.1/cat.png",
    "http://2130706433/cat.png",
    "http://0x7f000001/cat.png",
    "http://127.1/cat.png",
    "http://0.0.0.0:7860/",
    "https://100.64.0.1/cat.png",
]
FREE_FORM_FIELDS = ["seed", "cfg_scale", "subseed_strength", "restore_faces", "sampler_name"]
ODD_VALUES: list[Any] = ["many", {"x": 1}, [1, 2], -7, 0, "", {"$ne": None}]
STRANGE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@dataclass
class Outcome:
    name: str
    kind: str
    refused: str = ""  # the API server's answer, when it refused the task


@pytest.fixture(scope="module", autouse=True)
def runtimes(cluster: Cluster) -> Iterator[None]:
    for runtime, pool in RUNTIMES.items():
        cluster.models(runtime, MODEL)
        # agent: {} is the default link policy (no private addresses), not the e2e suite's loosened one.
        cluster.runtime(runtime, pool, checkpoint=MODEL, agent={}, scaling={"minReplicas": 2, "maxReplicas": 2})
    yield


def base_task(runtime: str, tasktype: str = "text-to-image", **content: Any) -> dict[str, Any]:
    return {
        "metadata": {"id": "x", "runtime": runtime, "tasktype": tasktype, "prefix": "hostile"},
        "content": {"prompt": "p", "steps": 2, "width": 64, "height": 64, **content},
    }


runtime_names = st.sampled_from(sorted(RUNTIMES))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), STRANGE_TEXT)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRANGE_TEXT, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def garbage(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Odd types where the schema wants others: the task itself, its metadata, the spec's own fields."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return "garbage", {"task": draw(json_values)}
    task = base_task(draw(runtime_names))
    if choice == 1:
        key = draw(st.sampled_from(["id", "runtime", "tasktype", "prefix"]))
        not_text = json_values.filter(lambda value: not isinstance(value, str))
        invalid = {  # values each field refuses (a random string may well be a valid id)
            "id": st.sampled_from(["../../etc", "/abs", "a..b", " ", "", "a b", "\u00e9", "x/y"]),
            "prefix": st.sampled_from(["../../etc", "/abs", "a..b", " ", "", "a\nb", "\u00e9"]),
            "runtime": st.sampled_from(["UPPER", "a_b", "-x", "x" * 64, "hostile-a "]),
            "tasktype": STRANGE_TEXT.filter(lambda text: text not in TASK_TYPES),
        }
        task["metadata"][key] = draw(not_text | invalid[key])
        return "garbage", {"task": task}
    if choice == 2:
        task["content"] = draw(json_values.filter(lambda value: not isinstance(value, dict)))
        return "garbage", {"task": task}
    field = draw(st.sampled_from(["priority", "timeoutSeconds", "maxRetries", "activeDeadlineSeconds", "callback"]))
    odd = draw(st.sampled_from([10**9, -(10**9), "soon", [1], {"url": "javascript:alert(1)"}, {"url": "file:///x"}]))
    return "garbage", {"task": task, field: odd}


@st.composite
def huge(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Strings over their caps, or a content over the operator's byte cap made of fields under theirs."""
    task = base_task(draw(runtime_names))
    if draw(st.integers(0, 9)) == 0:  # rare: each such task is half a megabyte in etcd
        chunk = MAX_PROMPT_CHARS - 1
        task["content"].update({f"f{i}": "z" * chunk for i in range(MAX_CONTENT_BYTES // chunk + 1)})
    else:
        field = draw(st.sampled_from(["prompt", "negative_prompt", "id", "prefix"]))
        # Over the field's cap (a request past the API server's 3 MiB limit only gets its connection cut).
        size = draw(st.sampled_from([MAX_PROMPT_CHARS + 1, 2 * MAX_PROMPT_CHARS, 200_000]))
        target = task["metadata"] if field in ("id", "prefix") else task["content"]
        target[field] = draw(st.sampled_from(["a", "\u00e9", "\U0001f600", "<"])) * size
    return "huge", {"task": task}


@st.composite
def deep(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Content nested past the operator's limit (which also keeps kopf's and the agent's decoding safe)."""
    value: Any = draw(json_leaf)
    for _ in range(draw(st.integers(MAX_CONTENT_DEPTH + 1, 3 * MAX_CONTENT_DEPTH))):
        value = [value] if draw(st.booleans()) else {"k": value}
    task = base_task(draw(runtime_names))
    task["content"][draw(st.sampled_from(["alwayson_scripts", "override_settings", "nested"]))] = value
    return "deep", {"task": task}


@st.composite
def many_links(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    count = draw(st.integers(17, 400))
    links = [f"http://10.{index % 256}.0.1/{index}.png" for index in range(count)]
    task = base_task(draw(runtime_names), "image-to-image", init_images=links)
    return "many-links", {"task": task}


@st.composite
def hostile_link(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A link the default policy refuses, where a task may carry one: img2img input, mask, or extras image."""
    link = draw(st.sampled_from(HOSTILE_LINKS))
    runtime = draw(runtime_names)
    where = draw(st.integers(0, 2))
    if where == 0:
        task = base_task(runtime, "image-to-image", init_images=[link])
    elif where == 1:
        task = base_task(runtime, "image-to-image", init_images=[link], mask=link)
    else:
        task = base_task(runtime, "extra-single-image")
        task["content"] = {"image": link, "upscaling_resize": 2}
    return "hostile-link", {"task": task}


@st.composite
def odd_types(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Values the schema refuses (its typed fields), or, in the free-form rest of the content, values that reach the
    Web UI and that its API model refuses."""
    typed = draw(st.booleans())
    fields = ["steps", "width", "height", "batch_size", "n_iter", "prompt"] if typed else FREE_FORM_FIELDS
    field = draw(st.sampled_from(fields))
    value = draw(st.sampled_from(ODD_VALUES[1:3] if field in ("prompt", *FREE_FORM_FIELDS) else ODD_VALUES[:5]))
    task = base_task(draw(runtime_names))
    task["content"].update(draw(st.dictionaries(STRANGE_TEXT, json_values, max_size=3)))
    # An unknown sampler name becomes the default one (as in the real server): only its type can be wrong.
    textual = not typed and field != "sampler_name"
    task["content"][field] = draw(st.sampled_from(["many", value])) if textual else value
    return "odd-types" if typed else "odd-types-webui", {"task": task}


# Each kind as often as the others (one_of leans to the first ones).
hostile_specs = st.sampled_from([garbage(), huge(), deep(), many_links(), hostile_link(), odd_types()]).flatmap(
    lambda kind: kind
)


def good_task(index: int) -> dict[str, Any]:
    task = base_task(sorted(RUNTIMES)[index % len(RUNTIMES)])
    task["metadata"]["id"] = f"good-{index}"
    return task


def agent_pids(cluster: Cluster) -> dict[str, int]:
    return {
        key[1]: pod.agent.pid
        for key, pod in list(cluster.system.sidecars.pods.items())
        if key[0] == cluster.namespace and pod.runtime in RUNTIMES and pod.agent.running()
    }


def test_hostile_tasks_are_refused_or_fail_with_a_reason_and_break_nothing(cluster: Cluster) -> None:
    pods = wait_for(lambda: four if len(four := agent_pids(cluster)) == 4 else None, 90, "four runtime pods")
    operator_pid = cluster.system.operator.pid
    outcomes: list[Outcome] = []
    good: list[str] = []
    counter = itertools.count()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,  # the same thousand tasks on every run
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_specs)
    def submit(example: tuple[str, dict[str, Any]]) -> None:
        kind, spec = example
        index = next(counter)
        name = f"h-{index:05d}"
        task = spec.get("task")
        if isinstance(task, dict) and isinstance(task.get("metadata"), dict) and task["metadata"].get("id") == "x":
            task["metadata"]["id"] = name  # distinct outputs, where the id is not the hostile part
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SDTask", "metadata": {"name": name}, "spec": spec}
        try:
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdtasks", body)
            outcomes.append(Outcome(name, kind))
        except ApiException as error:
            assert error.status in (400, 413, 422), (error.status, error.reason)
            outcomes.append(Outcome(name, kind, refused=f"{error.status}"))
        if index % GOOD_EVERY == 0:
            good.append(cluster.submit(good_task(index), name=f"good-{index:05d}"))

    submit()
    submitted = time.monotonic() - started
    admitted = {outcome.name: outcome for outcome in outcomes if not outcome.refused}
    assert len(outcomes) >= 1000

    def all_finished() -> dict[str, dict[str, Any]] | None:
        listing = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdtasks")
        statuses = {item["metadata"]["name"]: item.get("status") or {} for item in listing["items"]}
        unfinished = [name for name in [*admitted, *good] if statuses[name].get("phase") not in ("Succeeded", "Failed")]
        return statuses if not unfinished else None

    statuses = wait_for(all_finished, 180, "every admitted task to finish", interval=1.0)
    elapsed = time.monotonic() - started

    assert all(statuses[name]["phase"] == "Succeeded" for name in good), {
        name: statuses[name].get("message") for name in good if statuses[name]["phase"] != "Succeeded"
    }
    for name, outcome in admitted.items():
        status = statuses[name]
        assert status["phase"] == "Failed", (outcome.kind, name, status.get("message"))
        assert status.get("reason") and status.get("message"), (outcome.kind, name, status)
        if outcome.kind == "odd-types-webui":  # the Web UI's own validation answered
            assert status["reason"] == "WebUIError", (name, status["message"])
        if outcome.kind == "hostile-link":  # refused by the agent's address policy, never fetched
            assert status["reason"] == "LinkFailed" and "refused" in status["message"], (name, status["message"])
    # Nothing restarted: the same operator process and the same agent processes all along.
    assert cluster.system.operator.running() and cluster.system.operator.pid == operator_pid
    assert agent_pids(cluster) == pods

    reasons = Counter(f"{admitted[n].kind}:{statuses[n]['reason']}" for n in admitted)
    refused = Counter(f"{o.kind}:{o.refused}" for o in outcomes if o.refused)
    print(
        f"\n{len(outcomes)} hostile tasks ({len(outcomes) - len(admitted)} refused by the API server, "
        f"{len(admitted)} admitted and Failed) + {len(good)} good ones (all Succeeded): submitted in {submitted:.0f}s, "
        f"all finished after {elapsed:.0f}s\nrefused: {dict(sorted(refused.items()))}\n"
        f"failed: {dict(sorted(reasons.items()))}"
    )
