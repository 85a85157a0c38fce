{{/* Names and labels shared by every template. */}}

{{- define "autolabel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "autolabel.fullname" -}}
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

{{- define "autolabel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "autolabel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autolabel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Helm manages these objects; the operator's own children carry managed-by=autolabel-operator. */}}
{{- define "autolabel.labels" -}}
helm.sh/chart: {{ include "autolabel.chart" . }}
{{ include "autolabel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: autolabel
{{- end }}

{{- define "autolabel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "autolabel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "autolabel.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
RBAC rules in the namespaces the operator serves: exactly the requests of
operator/autolabel_operator (kube.py, and kopf's watches, finalizers, annotations and events).
tests/integration/test_helm_chart.py derives the same list from the operator code and fails on any
difference in either direction.
*/}}
{{- define "autolabel.namespacedRules" -}}
# kopf: watch AutoLabelJobs, patch finalizers and its progress annotations; the operator patches labels.
- apiGroups: [autolabel.dev]
  resources: [autolabeljobs]
  verbs: [list, watch, patch]
- apiGroups: [autolabel.dev]
  resources: [autolabeljobs/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion: clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) require this.
- apiGroups: [autolabel.dev]
  resources: [autolabeljobs/finalizers]
  verbs: [update]
# The worker Job: indexed by kopf, created, suspended/resumed, deleted with the AutoLabelJob.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Worker pods: indexed by kopf (phase, scheduling failures).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Per-job job description (ConfigMap) and storage credentials (Secret), replaced when a Job is created
# again (so it never runs with stale ones); the garbage collector deletes them with the AutoLabelJob.
# Secrets are read for spec.storage.secretRef.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update]
# The per-dataset lock.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
# Kueue (spec.queueName): the Workload of a queued worker Job is read for Kueue's reason, deactivated on
# spec.suspend and re-activated on resume (Kueue owns a queued Job's spec.suspend).
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, patch]
# kopf.event(): one Event per status transition.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Cluster-wide reads of the operator framework (kopf): CRD discovery, and the namespace list when it
serves named namespaces only (clusterwide, it does not list namespaces). */}}
{{- define "autolabel.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
