{{/* Names, labels and the operator's RBAC rules, shared by the templates. */}}

{{- define "sdtask-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sdtask-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects (ClusterRoles and their bindings) carry the release namespace in their name, so two
releases of the same name in different namespaces never share them. */}}
{{- define "sdtask-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "sdtask-operator.fullname" .) }}
{{- end }}

{{- define "sdtask-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sdtask-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sdtask-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "sdtask-operator.baseLabels" -}}
helm.sh/chart: {{ include "sdtask-operator.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sdtask
{{- end }}

{{/* Labels of what the release creates besides the operator itself (runtimes, node pools). */}}
{{- define "sdtask-operator.commonLabels" -}}
{{ include "sdtask-operator.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the operator's own objects. */}}
{{- define "sdtask-operator.labels" -}}
{{ include "sdtask-operator.baseLabels" . }}
{{ include "sdtask-operator.selectorLabels" . }}
{{- end }}

{{- define "sdtask-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sdtask-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sdtask-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The operator's rules in the namespaces it serves: the whole cluster (ClusterRoleBinding) or each of watchNamespaces
(RoleBindings). Exactly the calls of sdtask/clients/kube.py and of kopf, no wildcards. Kubernetes lets a subject grant
in a Role only permissions it holds itself, so these also cover every rule of the agent's Role (AGENT_RULES in
sdtask/deployment.py), which the operator creates in each runtime namespace.
*/}}
{{- define "sdtask-operator.namespacedRules" -}}
# SDTasks: kopf lists and watches them (task index, admission events); the operator reads one before it changes it
# and deletes finished tasks when their TTL has passed. Everything it writes is status (no patch of the task itself).
- apiGroups: [sdtask.io]
  resources: [sdtasks]
  verbs: [get, list, watch, delete]
# Task status: admission, dispatch, requeue, failure and callback state. get: part of the agent's Role.
- apiGroups: [sdtask.io]
  resources: [sdtasks/status]
  verbs: [get, patch]
# SDRuntimes: kopf lists and watches them (runtime index, one daemon per runtime) and patches its finalizer on and off
# (a runtime's daemon stops before the runtime goes away). Nothing reads one by one, so no get.
- apiGroups: [sdtask.io]
  resources: [sdruntimes]
  verbs: [list, watch, patch]
# Runtime status: queue depth, desired and ready pods, conditions.
- apiGroups: [sdtask.io]
  resources: [sdruntimes/status]
  verbs: [patch]
# Runtime pods: kopf lists and watches them (pod index: readiness); the operator annotates their pod-deletion-cost
# so scale-down removes idle pods first. Never create or delete.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# The agents' model Leases (one per runtime pod, named after it: sdtask/modelreport.py): kopf lists and watches them
# (the loaded model, for model affinity). create and patch only because the agents' Role grants them (the API
# server accepts a Role from the operator only when it holds every rule itself); the operator never writes one, and
# the admission policy limits its writes to the ones it manages.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [list, watch, create, patch]
# Runtime Deployments: kopf lists and watches them; the operator writes them with server-side apply, which is a patch
# and, for a Deployment that does not exist yet, also a create; it deletes a deleted runtime's Deployment at once
# (Kube.delete_workloads) to free its GPUs before the garbage collector would. No update, no scale subresource.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
# Each runtime's Service: server-side apply as above, deleted with its Deployment.
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch, delete]
# The agents' ServiceAccount in each runtime namespace (shared by its runtimes, so never deleted): server-side apply.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, patch]
# The agents' Role and RoleBinding in each runtime namespace: server-side apply as above. No escalate or bind: the
# API server only accepts them because the operator holds every rule it grants.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, patch]
# The NetworkPolicy closing the runtime pods' ports in each runtime namespace (build_agent_access): server-side apply.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, patch]
# The token of a task's callback (spec.callback.secretRef) when the operator ends a task itself; part of the agent's
# Role too. get only: the operator can read a Secret it is named, but cannot list or watch Secrets.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events of the operator and of kopf: always created under a fresh name, never updated.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Cluster-scoped rules, needed whatever namespaces are served. */}}
{{- define "sdtask-operator.clusterRules" -}}
# kopf watches CRDs to notice the sdtask.io resources appear, change or go away (it only lists and watches them).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# kopf serving a list of namespaces lists and watches namespaces to start and stop its watches as they come and go.
# Serving the whole cluster it does not (it watches cluster-wide), so this rule is only here in namespaced mode.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
