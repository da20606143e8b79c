{{/*
Names. Every object name is at most 63 characters, also with a suffix and a 53-character
release name (Helm's longest).
*/}}
{{- define "tyk-dispatcher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tyk-dispatcher.fullname" -}}
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

{{/* <fullname>-<suffix>, the fullname shortened so that the whole stays within 63. Call with
(dict "root" $ "suffix" "headless"). */}}
{{- define "tyk-dispatcher.suffixed" -}}
{{- $base := include "tyk-dispatcher.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .suffix }}
{{- end }}

{{- define "tyk-dispatcher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tyk-dispatcher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tyk-dispatcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dispatcher
{{- end }}

{{/* Labels of every object but the dispatcher pods' selector. */}}
{{- define "tyk-dispatcher.baseLabels" -}}
helm.sh/chart: {{ include "tyk-dispatcher.chart" . }}
app.kubernetes.io/name: {{ include "tyk-dispatcher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tyk
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tyk-dispatcher.labels" -}}
{{ include "tyk-dispatcher.baseLabels" . }}
app.kubernetes.io/component: dispatcher
{{- end }}

{{- define "tyk-dispatcher.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "tyk-dispatcher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tyk-dispatcher.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tyk-dispatcher.tykNamespace" -}}
{{- default .Release.Namespace .Values.tyk.namespace }}
{{- end }}

{{/* The labels of the gateway pods (YAML map). */}}
{{- define "tyk-dispatcher.gatewayPodLabels" -}}
{{- if .Values.tyk.podLabels }}{{ toYaml .Values.tyk.podLabels }}{{ else }}tyk-dispatcher/gateway: {{ include "tyk-dispatcher.fullname" . }}{{ end }}
{{- end }}

{{/* Whether the overlay goes under tyk-gateway.gateway (umbrella charts) or gateway. */}}
{{- define "tyk-dispatcher.tykIsComponentChart" -}}
{{- if hasSuffix "tyk-gateway" .Values.tyk.chart }}true{{ end }}
{{- end }}

{{/* The gateway Deployment of the Tyk release: gateway-<release>-tyk-gateway, as Tyk's
fullname helper makes it. */}}
{{- define "tyk-dispatcher.tykGatewayDeployment" -}}
{{- $release := .Values.tyk.release }}
{{- $fullname := ternary $release (printf "%s-tyk-gateway" $release) (contains "tyk-gateway" $release) | trunc 63 | trimSuffix "-" }}
{{- printf "gateway-%s" $fullname }}
{{- end }}

{{/* Where the gateway dials: coprocess.grpcServer or the mode's default. */}}
{{- define "tyk-dispatcher.grpcServer" -}}
{{- if .Values.coprocess.grpcServer }}
{{- .Values.coprocess.grpcServer }}
{{- else if eq .Values.mode "sidecar" }}
{{- printf "unix://%s/dispatcher.sock" (trimSuffix "/" .Values.sidecar.socketDir) }}
{{- else }}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "tyk-dispatcher.suffixed" (dict "root" . "suffix" "headless")) .Release.Namespace .Values.clusterDomain (int .Values.grpc.port) }}
{{- end }}
{{- end }}

{{- define "tyk-dispatcher.usesSocket" -}}
{{- if and (eq .Values.mode "sidecar") (hasPrefix "unix:" (include "tyk-dispatcher.grpcServer" .)) }}true{{ end }}
{{- end }}

{{/* The TYK_GW_COPROCESSOPTIONS_* variables, from the one coprocess block. Call with
(dict "root" $ "gateway" true) for the gateway container (it also gets the authority and round
robin settings), with "gateway" false for the dispatcher (it reads the first three). */}}
{{- define "tyk-dispatcher.coprocessEnv" -}}
{{- $v := .root.Values.coprocess -}}
- name: TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER
  value: {{ include "tyk-dispatcher.grpcServer" .root | quote }}
- name: TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE
  value: {{ int64 $v.grpcRecvMaxSize | toString | quote }}
- name: TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE
  value: {{ int64 $v.grpcSendMaxSize | toString | quote }}
{{- if .gateway }}
{{- with $v.grpcAuthority }}
- name: TYK_GW_COPROCESSOPTIONS_GRPCAUTHORITY
  value: {{ . | quote }}
{{- end }}
{{- if and (eq .root.Values.mode "service") $v.grpcRoundRobinLoadBalancing }}
- name: TYK_GW_COPROCESSOPTIONS_GRPCROUNDROBINLOADBALANCING
  value: "true"
{{- end }}
{{- end }}
{{- end }}

{{/* CPU quantity ("2", "1500m", 0.5) in millicores. */}}
{{- define "tyk-dispatcher.cpuMillis" -}}
{{- $q := toString . }}
{{- if hasSuffix "m" $q }}
{{- trimSuffix "m" $q | int64 }}
{{- else }}
{{- mulf (float64 $q) 1000 | ceil | int64 }}
{{- end }}
{{- end }}

{{/* Memory quantity ("384Mi", "1G", 1048576) in bytes. */}}
{{- define "tyk-dispatcher.bytes" -}}
{{- $q := toString . }}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $unit := trimPrefix $number $q }}
{{- if or (not $number) (not (hasKey $units $unit)) }}
{{- fail (printf "resources: cannot read the memory quantity %q (use Ki, Mi, Gi, Ti, k, M, G, T or bytes)" $q) }}
{{- end }}
{{- mulf (float64 $number) (get $units $unit) | int64 }}
{{- end }}

{{/* worker_threads: workerThreads, else the CPU limit rounded up, else empty (the CPUs the
process sees). */}}
{{- define "tyk-dispatcher.workerThreads" -}}
{{- if .Values.workerThreads }}
{{- int .Values.workerThreads }}
{{- else if and .Values.resources .Values.resources.limits .Values.resources.limits.cpu }}
{{- $millis := include "tyk-dispatcher.cpuMillis" .Values.resources.limits.cpu | int64 }}
{{- max 1 (div (add $millis 999) 1000) }}
{{- end }}
{{- end }}

{{/* The dispatcher's settings as a dict (YAML), in one place: mode defaults, then the user's
config, then what the chart owns. */}}
{{- define "tyk-dispatcher.settings" -}}
{{- $cfg := dict }}
{{- if eq .Values.mode "service" }}
{{- $_ := set $cfg "log_calls" true }}
{{- $_ := set $cfg "max_connection_age_secs" 300 }}
{{- else }}
{{- $_ := set $cfg "log_calls" false }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- $_ := set $cfg $key $value }}
{{- end }}
{{- /* The in-flight budget fills the memory limit less the overhead the flood tests measure
(the runtime, allocator slack, unread HTTP/2 frames: at most 64 MiB), unless set. */}}
{{- $limits := (.Values.resources | default dict).limits | default dict }}
{{- if and $limits.memory (not (hasKey $cfg "max_in_flight_bytes")) }}
{{- $_ := set $cfg "max_in_flight_bytes" (sub (include "tyk-dispatcher.bytes" $limits.memory | int64) 67108864) }}
{{- end }}
{{- $_ := set $cfg "admin_listen" (printf "[::]:%d" (int .Values.admin.port)) }}
{{- with include "tyk-dispatcher.workerThreads" . }}
{{- $_ := set $cfg "worker_threads" (int .) }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- $_ := set $cfg "unix_socket_mode" .Values.sidecar.socketMode }}
{{- else }}
{{- $_ := set $cfg "listen" (list (printf "[::]:%d" (int .Values.grpc.port))) }}
{{- if .Values.tls.enabled }}
{{- $_ := set $cfg "tls_listen" (list (printf "[::]:%d" (int .Values.tls.port))) }}
{{- $_ := set $cfg "tls_cert" "/etc/tyk-dispatcher/tls/tls.crt" }}
{{- $_ := set $cfg "tls_key" "/etc/tyk-dispatcher/tls/tls.key" }}
{{- if .Values.tls.clientCA.secretName }}
{{- $_ := set $cfg "tls_client_ca" (printf "/etc/tyk-dispatcher/client-ca/%s" .Values.tls.clientCA.key) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* One TOML value: string, bool, number, array, or table (written inline, e.g. the entries of
config.hooks with their steps). */}}
{{- define "tyk-dispatcher.tomlValue" -}}
{{- if kindIs "map" . }}
{{- $pairs := list }}
{{- range $key := keys . | sortAlpha }}
{{- $pairs = append $pairs (printf "%s = %s" (include "tyk-dispatcher.tomlKey" $key) (include "tyk-dispatcher.tomlValue" (get $ $key))) }}
{{- end }}
{{- printf "{%s}" (join ", " $pairs) }}
{{- else if kindIs "bool" . }}
{{- . }}
{{- else if kindIs "string" . }}
{{- toJson . }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (include "tyk-dispatcher.tomlValue" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- if eq (float64 (int64 .)) (float64 .) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- else }}
{{- fail (printf "config: cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* A TOML key: bare when it can be, else quoted. */}}
{{- define "tyk-dispatcher.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/* dispatcher.toml. */}}
{{- define "tyk-dispatcher.toml" -}}
{{- $cfg := include "tyk-dispatcher.settings" . | fromYaml -}}
# tyk-dispatcher configuration, rendered by the tyk-dispatcher chart (mode: {{ .Values.mode }}).
# The container's TYK_GW_COPROCESSOPTIONS_* variables are the gateway's own: the dispatcher
# {{- if eq .Values.mode "sidecar" }} listens where the gateway dials and takes its size limits.
{{- else }} takes the gateway's size limits from them.
{{- end }}
{{- range $key := keys $cfg | sortAlpha }}
{{ include "tyk-dispatcher.tomlKey" $key }} = {{ include "tyk-dispatcher.tomlValue" (get $cfg $key) }}
{{- end }}
{{- end }}

{{- define "tyk-dispatcher.configChecksum" -}}
{{- include "tyk-dispatcher.toml" . | sha256sum }}
{{- end }}

{{/* The scrape job label (contains "tyk-dispatcher", as TykDispatcherDown expects). */}}
{{- define "tyk-dispatcher.job" -}}
{{- $fullname := include "tyk-dispatcher.fullname" . }}
{{- if .Values.monitoring.job }}
{{- .Values.monitoring.job }}
{{- else if contains "tyk-dispatcher" $fullname }}
{{- $fullname }}
{{- else }}
{{- printf "tyk-dispatcher-%s" $fullname }}
{{- end }}
{{- end }}

{{/* The pod's terminationGracePeriodSeconds: the longer of our drain and (sidecar) the
gateway's graceful shutdown, plus our shutdown grace, plus 5 s. */}}
{{- define "tyk-dispatcher.terminationGracePeriodSeconds" -}}
{{- $settings := include "tyk-dispatcher.settings" . | fromYaml }}
{{- $drain := int (default 45 (get $settings "drain_delay_secs")) }}
{{- $grace := int (default 30 (get $settings "shutdown_grace_secs")) }}
{{- $gateway := add (int .Values.tyk.gracefulShutdown.delaySeconds) (int .Values.tyk.gracefulShutdown.timeoutSeconds) }}
{{- if eq .Values.mode "sidecar" }}
{{- add (max $drain $gateway) $grace 5 }}
{{- else }}
{{- add $drain $grace 5 }}
{{- end }}
{{- end }}

{{/* Checks the values beyond what the schema can: called once, from the ConfigMap. */}}
{{- define "tyk-dispatcher.validate" -}}
{{- $settings := include "tyk-dispatcher.settings" . | fromYaml }}
{{- $server := include "tyk-dispatcher.grpcServer" . }}
{{- if eq .Values.mode "sidecar" }}
{{- $socketPrefix := printf "unix://%s/" (trimSuffix "/" .Values.sidecar.socketDir) }}
{{- if not (or (hasPrefix $socketPrefix $server) (regexMatch "^(tcp://)?(127\\.0\\.0\\.1|localhost|\\[::1\\]):[0-9]+$" $server)) }}
{{- fail (printf "coprocess.grpcServer: in sidecar mode the gateway dials a socket under sidecar.socketDir (%s…) or loopback TCP (tcp://127.0.0.1:PORT), not %q" $socketPrefix $server) }}
{{- end }}
{{- if and .Values.tyk.namespace (ne .Values.tyk.namespace .Release.Namespace) }}
{{- fail (printf "tyk.namespace: in sidecar mode install this chart in the Tyk release's namespace (%s), not %s: the gateway pods mount its ConfigMap" .Values.tyk.namespace .Release.Namespace) }}
{{- end }}
{{- $drain := int (default 45 (get $settings "drain_delay_secs")) }}
{{- $gateway := add (int .Values.tyk.gracefulShutdown.delaySeconds) (int .Values.tyk.gracefulShutdown.timeoutSeconds) }}
{{- if lt $drain $gateway }}
{{- fail (printf "config.drain_delay_secs (%d) is shorter than the gateway's graceful shutdown (tyk.gracefulShutdown: %d s): the sidecar would stop before the gateway's last calls" $drain $gateway) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- fail "tls.enabled: TLS is for service mode (Tyk dials its sidecar in plaintext)" }}
{{- end }}
{{- else }}
{{- if hasPrefix "unix:" $server }}
{{- fail "coprocess.grpcServer: a Unix socket cannot be shared across pods; service mode needs dns:///NAME:PORT or tcp://NAME:PORT" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.secretName: TLS needs a kubernetes.io/tls Secret (tls.crt, tls.key)" }}
{{- end }}
{{- if and .Values.tls.enabled (eq (int .Values.tls.port) (int .Values.grpc.port)) }}
{{- fail "tls.port: must differ from grpc.port" }}
{{- end }}
{{- $minReplicas := ternary (int .Values.autoscaling.minReplicas) (int .Values.replicaCount) .Values.autoscaling.enabled }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) }}
{{- if ge (int .Values.podDisruptionBudget.minAvailable) $minReplicas }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below the replica count (%d): such a budget blocks every node drain" (int .Values.podDisruptionBudget.minAvailable) $minReplicas) }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- end }}
{{- if eq (int .Values.admin.port) (int .Values.grpc.port) }}
{{- fail "admin.port: must differ from grpc.port" }}
{{- end }}
{{- $limits := (.Values.resources | default dict).limits | default dict }}
{{- if and .Values.workerThreads $limits.cpu }}
{{- $cpus := div (add (include "tyk-dispatcher.cpuMillis" $limits.cpu | int64) 999) 1000 }}
{{- if gt (int64 .Values.workerThreads) $cpus }}
{{- fail (printf "workerThreads (%d) exceeds resources.limits.cpu (%v): the threads would be throttled; raise the limit or lower workerThreads" (int .Values.workerThreads) $limits.cpu) }}
{{- end }}
{{- end }}
{{- if $limits.memory }}
{{- $recv := max (int64 (default 67108864 (get $settings "max_recv_bytes"))) (int64 .Values.coprocess.grpcSendMaxSize) }}
{{- $budget := int64 (get $settings "max_in_flight_bytes") }}
{{- $needed := add $budget 67108864 }}
{{- if lt (include "tyk-dispatcher.bytes" $limits.memory | int64) $needed }}
{{- fail (printf "resources.limits.memory (%v) is below the in-flight budget (%d bytes, config.max_in_flight_bytes) plus 64 MiB: the dispatcher could be OOM-killed under load; raise the limit to at least %dMi or lower max_in_flight_bytes" $limits.memory $budget (div (add $needed 1048575) 1048576)) }}
{{- end }}
{{- if lt $budget (mul 2 $recv) }}
{{- fail (printf "resources.limits.memory (%v) leaves an in-flight budget of %d bytes (the limit less 64 MiB, or config.max_in_flight_bytes), below twice the largest message (%d bytes, max_recv_bytes or coprocess.grpcSendMaxSize): a largest message through a hook could never be served; raise the limit to at least %dMi" $limits.memory $budget $recv (div (add (add (mul 2 $recv) 67108864) 1048575) 1048576)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The dispatcher container, ONE definition for both modes: the Deployment's container (service)
and the container in the Tyk overlay's extraContainers (sidecar).
*/}}
{{- define "tyk-dispatcher.container" -}}
name: tyk-dispatcher
image: {{ include "tyk-dispatcher.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  - --config
  - /etc/tyk-dispatcher/dispatcher.toml
env:
  {{- include "tyk-dispatcher.coprocessEnv" (dict "root" . "gateway" false) | nindent 2 }}
  - name: RUST_LOG
    value: {{ .Values.logLevel | quote }}
  - name: K8S_POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: K8S_NAMESPACE_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.namespace
  - name: K8S_NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
  - name: OTEL_RESOURCE_ATTRIBUTES
    value: k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE_NAME),k8s.node.name=$(K8S_NODE_NAME),k8s.container.name=tyk-dispatcher
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- if eq .Values.mode "service" }}
  - name: dispatch-grpc
    containerPort: {{ int .Values.grpc.port }}
    protocol: TCP
  {{- if .Values.tls.enabled }}
  - name: dispatch-tls
    containerPort: {{ int .Values.tls.port }}
    protocol: TCP
  {{- end }}
  {{- end }}
  - name: dispatch-admin
    containerPort: {{ int .Values.admin.port }}
    protocol: TCP
startupProbe:
  httpGet:
    path: /readyz
    port: dispatch-admin
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
readinessProbe:
  httpGet:
    path: /readyz
    port: dispatch-admin
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
livenessProbe:
  httpGet:
    path: /livez
    port: dispatch-admin
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "tyk-dispatcher.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: tyk-dispatcher-config
    mountPath: /etc/tyk-dispatcher
    readOnly: true
  {{- if include "tyk-dispatcher.usesSocket" . }}
  - name: tyk-dispatcher-socket
    mountPath: {{ .Values.sidecar.socketDir }}
  {{- end }}
  {{- if and (eq .Values.mode "service") .Values.tls.enabled }}
  - name: tyk-dispatcher-tls
    mountPath: /etc/tyk-dispatcher/tls
    readOnly: true
  {{- if .Values.tls.clientCA.secretName }}
  - name: tyk-dispatcher-client-ca
    mountPath: /etc/tyk-dispatcher/client-ca
    readOnly: true
  {{- end }}
  {{- end }}
terminationMessagePolicy: FallbackToLogsOnError
{{- end }}

{{- define "tyk-dispatcher.containerSecurityContext" -}}
runAsNonRoot: true
{{- if not (kindIs "invalid" .Values.runAsUser) }}
runAsUser: {{ int64 .Values.runAsUser }}
runAsGroup: {{ int64 .Values.runAsUser }}
{{- end }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The pod volumes the container needs (a list). */}}
{{- define "tyk-dispatcher.volumes" -}}
- name: tyk-dispatcher-config
  configMap:
    name: {{ include "tyk-dispatcher.fullname" . }}
{{- if include "tyk-dispatcher.usesSocket" . }}
- name: tyk-dispatcher-socket
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- if and (eq .Values.mode "service") .Values.tls.enabled }}
- name: tyk-dispatcher-tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- if .Values.tls.clientCA.secretName }}
- name: tyk-dispatcher-client-ca
  secret:
    secretName: {{ .Values.tls.clientCA.secretName }}
    items:
      - key: {{ .Values.tls.clientCA.key }}
        path: {{ .Values.tls.clientCA.key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The values overlay for the Tyk release (sidecar mode). Call with (dict "root" $ "component" BOOL):
component false: umbrella charts (tyk-oss, tyk-stack, tyk-data-plane, tyk-control-plane),
values under tyk-gateway.gateway.*; true: the tyk-gateway chart, values under gateway.*.
*/}}
{{- define "tyk-dispatcher.tykOverlay" -}}
{{- $root := .root }}
{{- $prefix := ternary "gateway" "tyk-gateway.gateway" .component }}
{{- $gatewayMounts := list }}
{{- if include "tyk-dispatcher.usesSocket" $root }}
{{- $gatewayMounts = list (dict "name" "tyk-dispatcher-socket" "mountPath" $root.Values.sidecar.socketDir "readOnly" true) }}
{{- end }}
{{- $gateway := dict
  "podLabels" (include "tyk-dispatcher.gatewayPodLabels" $root | fromYaml)
  "podAnnotations" (dict "checksum/tyk-dispatcher-config" (include "tyk-dispatcher.configChecksum" $root))
  "extraEnvs" (include "tyk-dispatcher.coprocessEnv" (dict "root" $root "gateway" true) | fromYamlArray)
  "extraVolumes" (include "tyk-dispatcher.volumes" $root | fromYamlArray)
  "extraContainers" (list (include "tyk-dispatcher.container" $root | fromYaml))
}}
{{- /* An empty list would replace mounts the release already has. */}}
{{- with $gatewayMounts }}
{{- $_ := set $gateway "extraVolumeMounts" . }}
{{- end }}
{{- $doc := dict "gateway" $gateway }}
{{- if not .component }}
{{- $doc = dict "tyk-gateway" $doc }}
{{- end -}}
# Values overlay for Tyk's {{ ternary "tyk-gateway chart (values under gateway.*)" "umbrella charts tyk-oss, tyk-stack, tyk-data-plane and tyk-control-plane (values under tyk-gateway.gateway.*)" .component }}:
# runs tyk-dispatcher {{ $root.Chart.AppVersion }} as a sidecar in every gateway pod.
# Generated by the tyk-dispatcher chart {{ $root.Chart.Version }} (release {{ $root.Release.Name }}, mode sidecar); the copy in
# the repository's deploy/ is written by scripts/render-deploy.py. Do not edit: change the chart's values.
# Checked against TykTechnologies/tyk-charts 5.3.0 (gateway v5.13.1). Tyk's charts have no
# values schema: under a wrong prefix the sidecar would silently not render.
#
# Needs this release's ConfigMap {{ include "tyk-dispatcher.fullname" $root }} (dispatcher.toml) in the gateway's namespace:
#   helm upgrade {{ $root.Values.tyk.release }} {{ $root.Values.tyk.chart }} -n {{ include "tyk-dispatcher.tykNamespace" $root }} --reuse-values -f THIS_FILE
# The lists below replace lists of the same name set before (extraEnvs, extraContainers, …): merge
# them by hand if the release already sets {{ $prefix }}.extra*.
#
# terminationGracePeriodSeconds: both containers get SIGTERM together; the dispatcher drains until
# the gateway's connection closes (at most {{ get (include "tyk-dispatcher.settings" $root | fromYaml) "drain_delay_secs" | default 45 }} s), so it leaves last. The pod should allow
# the gateway's graceful shutdown ({{ $root.Values.tyk.gracefulShutdown.delaySeconds }} + {{ $root.Values.tyk.gracefulShutdown.timeoutSeconds }} s) plus the dispatcher's grace: {{ include "tyk-dispatcher.terminationGracePeriodSeconds" $root }} s. tyk-charts 5.3.0
# cannot set it (no value for it; Kubernetes' default is 30 s), so patch the gateway workload:
#   kubectl -n {{ include "tyk-dispatcher.tykNamespace" $root }} patch deployment {{ include "tyk-dispatcher.tykGatewayDeployment" $root }} --type merge \
#     -p '{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":{{ include "tyk-dispatcher.terminationGracePeriodSeconds" $root }}}}}}'
{{ toYaml $doc }}
{{- end }}
