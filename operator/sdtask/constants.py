"""Names shared by the operator, the agent and the chart: API group, labels, annotations, phases."""

from __future__ import annotations

from sdtask.api.common import API_VERSION, GROUP, VERSION
from sdtask.api.task import ACTIVE_PHASES, FINISHED_PHASES, Phase

__all__ = ["ACTIVE_PHASES", "API_VERSION", "FINISHED_PHASES", "GROUP", "VERSION", "Phase"]

TASK_PLURAL = "sdtasks"
TASK_KIND = "SDTask"
RUNTIME_PLURAL = "sdruntimes"

LABEL_RUNTIME = "sdtask.io/runtime"  # on runtime pods, Deployments and model Leases
# A task names its pod in status.pod, a selectable field of the CRD: the agent of that pod watches the tasks whose
# status.pod is its own name, so a dispatch is one status write (no label to keep in step with it).
FIELD_POD = "status.pod"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Opt-in on a Secret: a task's callback.secretRef may name it (any other Secret is refused, like a missing one).
LABEL_CALLBACK_SECRET = "sdtask.io/callback-secret"
# The operator's name: its field manager, the component of its Events, the managed-by label of what it owns.
OPERATOR_NAME = "sdtask-operator"
MANAGER = OPERATOR_NAME
# The image of the operator, the agent and the CLI (devcluster/images.py builds it under this tag, stdlib only).
DEFAULT_IMAGE = f"{OPERATOR_NAME}:0.1.0"

ANNOTATION_MODEL = "sdtask.io/model"  # on a pod's model Lease: the checkpoint its Web UI loaded (modelreport.py)
ANNOTATION_REQUEST_FORMAT = "sdtask.io/request-format"  # "legacy" when converted from the old flat body
POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"  # busy pods are the last a ReplicaSet removes

AGENT_CONTAINER = "agent"
MODEL_FETCH_CONTAINER = "fetch-model"  # init container of a static runtime whose checkpoint comes from models.s3Prefix
WEBUI_CONTAINER = "webui"
