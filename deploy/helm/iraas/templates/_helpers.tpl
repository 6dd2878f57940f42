{{/* Names and labels, as `helm create` makes them. */}}
{{- define "iraas.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iraas.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "iraas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "iraas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "iraas.selector" -}}
app.kubernetes.io/name: {{ include "iraas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "iraas.serviceAccount" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "iraas.fullname" .) .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end }}
{{- end }}

{{- define "iraas.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* A worker stopped by Kubernetes finishes the batch it holds: the grace period covers the
longest batch, and the visibility timeout besides. */}}
{{- define "iraas.workerGrace" -}}
{{- $bound := add .Values.workers.maxBatchSeconds .Values.workers.visibilityTimeoutSeconds -}}
{{- $grace := .Values.workers.terminationGracePeriodSeconds | default (add $bound 10) -}}
{{- if lt (int $grace) (int $bound) -}}
{{- fail (printf "workers.terminationGracePeriodSeconds (%d) is below maxBatchSeconds + visibilityTimeoutSeconds (%d): Kubernetes would kill a worker in the middle of a batch" (int $grace) (int $bound)) -}}
{{- end -}}
{{ $grace }}
{{- end }}

{{/* Pod and container security: no root, nothing written outside the two scratch volumes. */}}
{{- define "iraas.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "iraas.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{- define "iraas.volumes" -}}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
{{- end }}

{{- define "iraas.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/iraas
{{- end }}

{{/* Every process's settings: the ConfigMap, then the ones held in Secrets, then `extra`
(a list of env entries). Called with (dict "root" . "extra" (list …)). */}}
{{- define "iraas.env" -}}
{{- $root := .root -}}
{{- $env := list -}}
{{- if eq $root.Values.backend "postgresql" }}
{{- $url := dict "secretKeyRef" (dict "name" $root.Values.postgresql.existingSecret "key" $root.Values.postgresql.secretKey) }}
{{- $env = append $env (dict "name" "IRAAS_QUEUE" "valueFrom" $url) }}
{{- $env = append $env (dict "name" "IRAAS_BLOBS" "valueFrom" $url) }}
{{- end }}
{{- with $root.Values.webhooks.existingSecret }}
{{- $ref := dict "secretKeyRef" (dict "name" . "key" $root.Values.webhooks.secretKey) }}
{{- $env = append $env (dict "name" "IRAAS_WEBHOOK_SECRET" "valueFrom" $ref) }}
{{- end }}
{{- $env = concat $env (.extra | default list) }}
envFrom:
  - configMapRef:
      name: {{ include "iraas.fullname" $root }}
{{- with $env }}
env: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "iraas.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
