{{/* Names, labels and the operator's RBAC rules, shared by the templates. */}}

{{- define "pagedserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pagedserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "pagedserve.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "pagedserve.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels on everything the release creates. */}}
{{- define "pagedserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pagedserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels on the operator's own objects; the selector part never changes on upgrade. */}}
{{- define "pagedserve.operatorLabels" -}}
{{ include "pagedserve.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "pagedserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pagedserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "pagedserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pagedserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pagedserve.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/* Engine image for one accelerator: the explicit override or repository:tag-<suffix>. */}}
{{- define "pagedserve.engineImage" -}}
{{- $root := index . 0 }}{{- $accel := index . 1 }}{{- $suffix := index . 2 }}
{{- $img := $root.Values.engine.image }}
{{- default (printf "%s:%s-%s" $img.repository (default $root.Chart.AppVersion $img.tag) $suffix) (index $root.Values.engine.images $accel) }}
{{- end }}

{{/* An LLMDeployment's name: its `name`, else the model id's last segment as a DNS label. */}}
{{- define "pagedserve.modelName" -}}
{{- if .name }}
{{- .name }}
{{- else }}
{{- $base := .model | splitList "/" | last | lower }}
{{- regexReplaceAll "[^a-z0-9-]+" $base "-" | trunc 63 | trimAll "-" }}
{{- end }}
{{- end }}

{{/*
What the operator calls on the API server: a copy of pagedserve.operator.rbac that
tests/charts compares with it and with a recorded run of the real operator. `namespaced` goes
into a ClusterRole when the operator serves all namespaces, else into a Role per watched
namespace. kopf's peering objects are cluster-scoped for a cluster-wide operator and
namespaced otherwise, and not used at all when it runs standalone.
*/}}
{{- define "pagedserve.rbacRules" -}}
namespaced:
  - apiGroups: [pagedserve.io]
    resources: [llmdeployments]
    verbs: [get, list, watch, patch]
  - apiGroups: [pagedserve.io]
    resources: [llmdeployments/status]
    verbs: [patch]
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, create, patch]
  - apiGroups: [""]
    resources: [services]
    verbs: [get, list, watch, create, patch]
  - apiGroups: [autoscaling]
    resources: [horizontalpodautoscalers]
    verbs: [get, create, patch, delete]
  - apiGroups: [policy]
    resources: [poddisruptionbudgets]
    verbs: [get, create, patch, delete]
  - apiGroups: [""]
    resources: [persistentvolumeclaims]
    verbs: [get, create, patch, delete]
  - apiGroups: [keda.sh]
    resources: [scaledobjects]
    verbs: [get, create, patch, delete]
  - apiGroups: [inference.networking.k8s.io]
    resources: [inferencepools]
    verbs: [get, create, patch, delete]
  - apiGroups: [leaderworkerset.x-k8s.io]
    resources: [leaderworkersets]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get]
  - apiGroups: [""]
    resources: [events]
    verbs: [create]
peeringNamespaced:
  - apiGroups: [kopf.dev]
    resources: [kopfpeerings]
    verbs: [list, watch, patch]
peeringCluster:
  - apiGroups: [kopf.dev]
    resources: [clusterkopfpeerings]
    verbs: [list, watch, patch]
{{- end }}
