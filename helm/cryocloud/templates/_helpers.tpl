{{/* The job's name: the release name, which is also the DaskCluster's (`<name>-scheduler` must be a DNS-1035 name). */}}
{{- define "cryocloud.name" -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]{0,51}[a-z0-9])?$" .Release.Name) -}}
{{- fail (printf "release name %q: expected lowercase letters, digits and '-', starting with a letter, at most 53 characters" .Release.Name) -}}
{{- end -}}
{{- .Release.Name -}}
{{- end -}}

{{- define "cryocloud.labels" -}}
app.kubernetes.io/name: cryocloud
app.kubernetes.io/instance: {{ include "cryocloud.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Pod-level fields every cryocloud pod shares: identity without an API token, non-root. Argument: root context. */}}
{{- define "cryocloud.pod" -}}
serviceAccountName: {{ .Values.serviceAccount.name }}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* nodeSelector and tolerations. Argument: dict with nodeSelector, tolerations. */}}
{{- define "cryocloud.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Worker placement: the global nodeSelector/tolerations plus the worker's own. Argument: root context. */}}
{{- define "cryocloud.workerPlacement" -}}
{{- include "cryocloud.placement" (dict "nodeSelector" (merge (deepCopy .Values.worker.nodeSelector) .Values.nodeSelector) "tolerations" (concat .Values.tolerations .Values.worker.tolerations)) -}}
{{- end -}}

{{/* Container fields every cryocloud container shares: image, no privilege, scratch, credentials. Argument: root context. */}}
{{- define "cryocloud.container" -}}
image: {{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
{{- with .Values.credentials.secretName }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}

{{/* Resources. Argument: dict with cpu, memory, gpus. */}}
{{- define "cryocloud.resources" -}}
resources:
  requests:
    cpu: {{ .cpu | toString | quote }}
    memory: {{ .memory | quote }}
  limits:
    memory: {{ .memory | quote }}
    {{- if .gpus }}
    nvidia.com/gpu: {{ .gpus | toString | quote }}
    {{- end }}
{{- end -}}

{{/* The runner container that executes the pipeline config. Argument: dict with root, cpu, memory, gpus. */}}
{{- define "cryocloud.runner" -}}
- name: job
  {{- include "cryocloud.container" .root | nindent 2 }}
  args: [cryocloud, run, /config/run.yaml]
  {{- include "cryocloud.resources" . | nindent 2 }}
  volumeMounts:
    - name: scratch
      mountPath: /tmp
    - name: config
      mountPath: /config
      readOnly: true
{{- end -}}

{{/* Pod volumes: the scratch emptyDir, and the pipeline config. Argument: dict with root, withConfig. */}}
{{- define "cryocloud.volumes" -}}
volumes:
  - name: scratch
    emptyDir:
      sizeLimit: {{ .root.Values.scratchSize | quote }}
  {{- if .withConfig }}
  - name: config
    configMap:
      name: {{ include "cryocloud.name" .root }}-config
  {{- end }}
{{- end -}}
