{{/* Names and labels, as `helm create` lays them out. */}}
{{- define "glimpse.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glimpse.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "glimpse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "glimpse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "glimpse.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "glimpse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "glimpse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "glimpse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "glimpse.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding GLIMPSE_API_KEYS, or nothing when the service runs without keys. */}}
{{- define "glimpse.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else if .Values.apiKeys.create }}
{{- printf "%s-api-keys" (include "glimpse.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The shutdown arithmetic (values.yaml, `shutdown`): the grace period covers the preStop sleep, the
drain, uvicorn's graceful shutdown and a margin; the graceful shutdown covers the request deadline.
*/}}
{{- define "glimpse.requestTimeoutS" -}}
{{- $timeout := index .Values.settings "request_timeout_s" | default 10 }}
{{- $timeout }}
{{- end }}

{{- define "glimpse.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown }}
{{- $timeout := include "glimpse.requestTimeoutS" . | float64 }}
{{- if lt (float64 $s.gracefulTimeoutS) $timeout }}
{{- fail (printf "shutdown.gracefulTimeoutS (%v) must be at least settings.request_timeout_s (%v): requests in flight end by their deadline" $s.gracefulTimeoutS $timeout) }}
{{- end }}
{{- range $name := list "preStopSleepS" "drainS" "gracefulTimeoutS" "marginS" }}
{{- $value := index $s $name }}
{{- if or (not (kindIs "int64" $value | or (kindIs "float64" $value))) (lt (float64 $value) 0.0) (ne (float64 $value) (float64 (int64 $value))) }}
{{- fail (printf "shutdown.%s must be a whole number of seconds ≥ 0, not %v" $name $value) }}
{{- end }}
{{- end }}
{{- add $s.preStopSleepS $s.drainS $s.gracefulTimeoutS $s.marginS }}
{{- end }}
