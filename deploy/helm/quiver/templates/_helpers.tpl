{{/* Names */}}
{{- define "quiver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-chart, truncated so that "<fullname>-serving-headless" (the longest suffix,
17 characters) still fits the 63-character DNS label limit.
*/}}
{{- define "quiver.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- /*
A CronJob's name: Kubernetes refuses more than 52 characters, since the Jobs it starts append
11 to it.
*/}}
{{- define "quiver.cronJobName" -}}
{{- printf "%s-%s" (include "quiver.fullname" .ctx) .suffix | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "quiver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quiver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quiver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "quiver.labels" -}}
helm.sh/chart: {{ include "quiver.chart" . }}
{{ include "quiver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quiver
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component; call with (dict "ctx" $ "component" "serving"). */}}
{{- define "quiver.componentLabels" -}}
{{ include "quiver.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "quiver.componentSelectorLabels" -}}
{{ include "quiver.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "quiver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quiver.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "quiver.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "quiver.configMapName" -}}
{{- printf "%s-config" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.claimName" -}}
{{- default (printf "%s-data" (include "quiver.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Paths inside the pods. */}}
{{- define "quiver.aerospikeTlsDir" -}}/etc/quiver/aerospike-tls{{- end }}
{{- define "quiver.repoSourceDir" -}}/etc/quiver/repo-source{{- end }}
{{- define "quiver.configDir" -}}/etc/quiver/config{{- end }}
{{- define "quiver.ticketKeysDir" -}}/etc/quiver/ticket-keys{{- end }}
{{- define "quiver.ticketKeysFile" -}}{{ include "quiver.ticketKeysDir" . }}/keys{{- end }}

{{/* True ("true") when the definitions come from a volume and are copied in by an init container. */}}
{{- define "quiver.repoFromVolume" -}}
{{- if .Values.featureRepo.volume }}true{{- end }}
{{- end }}

{{/*
quiver.yaml, built as a dict and serialized with toYaml so that every value is quoted correctly.
Keys and nesting follow quiver_server.config.QuiverConfig (extra="forbid"); the chart tests load
the rendered file with that model.
*/}}
{{- define "quiver.config" -}}
{{- $v := .Values }}
{{- $data := trimSuffix "/" $v.persistence.mountPath }}
{{- $online := dict }}
{{- if eq $v.onlineStore.type "sqlite" }}
{{- $online = dict "type" "sqlite" "path" (default (printf "%s/online.db" $data) $v.onlineStore.sqlite.path) }}
{{- else }}
{{- $a := $v.aerospike }}
{{- $tls := dict "enabled" $a.tls.enabled }}
{{- if $a.tls.enabled }}
{{- $dir := include "quiver.aerospikeTlsDir" . }}
{{- $_ := set $tls "name" $a.tls.name }}
{{- $_ := set $tls "cafile" (printf "%s/ca.crt" $dir) }}
{{- if $a.tls.certKey }}
{{- $_ := set $tls "certfile" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $tls "keyfile" (printf "%s/tls.key" $dir) }}
{{- end }}
{{- end }}
{{- $online = dict "type" "aerospike" "hosts" $a.hosts "namespace" $a.namespace "tls" $tls "connect_timeout_ms" $a.connectTimeoutMs "read_timeout_ms" $a.readTimeoutMs "write_timeout_ms" $a.writeTimeoutMs "max_retries" $a.maxRetries "replica" $a.replica "batch_size" $a.batchSize "password_env" "QUIVER_AEROSPIKE_PASSWORD" }}
{{- if $a.auth.user }}
{{- $_ := set $online "user" $a.auth.user }}
{{- end }}
{{- end }}
{{- $s := $v.serving }}
{{- $serving := dict "host" "0.0.0.0" "port" $s.port "workers" $s.workers "max_entities" $s.maxEntities "max_delete_entities" $s.maxDeleteEntities "heavy_request_entities" $s.heavyRequestEntities "max_heavy_requests" $s.maxHeavyRequests "max_future_seconds" $s.maxFutureSeconds "max_workers_threads" $s.maxWorkerThreads "grace_seconds" $s.graceSeconds }}
{{- if gt (int $s.healthPort) 0 }}
{{- $_ := set $serving "health_port" $s.healthPort }}
{{- end }}
{{- $f := $v.flight }}
{{- $flight := dict "host" "0.0.0.0" "port" $f.port "max_spine_rows" $f.maxSpineRows "max_spine_bytes" (int64 $f.maxSpineBytes) "max_stored_spine_bytes" (int64 $f.maxStoredSpineBytes) "spine_ttl_seconds" $f.spineTtlSeconds "spine_sweep_seconds" $f.spineSweepSeconds "spine_root" $f.spineRoot "max_concurrent_streams" $f.maxConcurrentStreams "max_concurrent_uploads" $f.maxConcurrentUploads "health_port" $f.health.port "health_check_seconds" $f.health.checkSeconds "partition_rows" $f.partitionRows "batch_rows" $f.batchRows "grace_seconds" $f.graceSeconds }}
{{- if $v.tls.enabled }}
{{- $dir := trimSuffix "/" $v.tls.mountPath }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) "reload_check_seconds" $v.tls.reloadCheckSeconds }}
{{- if $v.tls.clientCaKey }}
{{- $_ := set $tls "client_ca_file" (printf "%s/client-ca.crt" $dir) }}
{{- end }}
{{- $_ := set $serving "tls" $tls }}
{{- $_ := set $flight "tls" (deepCopy $tls) }}
{{- end }}
{{- if $f.location }}
{{- $_ := set $flight "location" $f.location }}
{{- end }}
{{- if $f.ticketKeys.existingSecret }}
{{- $_ := set $flight "ticket_key_file" (include "quiver.ticketKeysFile" .) }}
{{- end }}
{{- $t := $v.telemetry }}
{{- $tracing := dict "enabled" $t.tracing.enabled "exporter" $t.tracing.exporter "sampling_ratio" $t.tracing.samplingRatio "service_name" $t.tracing.serviceName }}
{{- if $t.tracing.endpoint }}
{{- $_ := set $tracing "endpoint" $t.tracing.endpoint }}
{{- end }}
{{- $metrics := dict "enabled" $t.metrics.enabled "port" $t.metrics.port }}
{{- if $t.metrics.pushgateway }}
{{- $_ := set $metrics "pushgateway" $t.metrics.pushgateway }}
{{- end }}
{{- $telemetry := dict "tracing" $tracing "metrics" $metrics "logging" (dict "format" $t.logging.format "level" $t.logging.level) }}
{{- $mo := $v.monitoring }}
{{- $monitoring := dict "enabled" $mo.enabled "serving_sample_rate" $mo.servingSampleRate "flush_seconds" $mo.flushSeconds "current_window_seconds" $mo.currentWindowSeconds "reference_window_seconds" $mo.referenceWindowSeconds "reference" $mo.reference }}
{{- $config := dict "project" $v.project "description" $v.description "registry" (default (printf "%s/registry" $data) $v.registryPath) "offline_store" (dict "root" (default (printf "%s/offline" $data) $v.offlineStore.root)) "online_store" $online "serving" $serving "flight" $flight "telemetry" $telemetry "monitoring" $monitoring }}
{{- $a := $v.auth }}
{{- if ne $a.mode "none" }}
{{- $authDir := trimSuffix "/" $a.mountPath }}
{{- $auth := dict "enabled" true "cache_seconds" $a.cacheSeconds }}
{{- if eq $a.mode "oidc" }}
{{- $oidc := dict "issuer" $a.oidc.issuer "audience" $a.oidc.audience "principal_claim" $a.oidc.principalClaim "groups_claim" $a.oidc.groupsClaim "leeway_seconds" $a.oidc.leewaySeconds }}
{{- with $a.oidc.jwksUrl }}
{{- $_ := set $oidc "jwks_url" . }}
{{- end }}
{{- if $a.oidc.caConfigMap }}
{{- $_ := set $oidc "ca_file" (printf "%s/oidc-ca.crt" $authDir) }}
{{- end }}
{{- $_ := set $auth "oidc" $oidc }}
{{- else }}
{{- $_ := set $auth "static" (dict "tokens_file" (printf "%s/tokens.yaml" $authDir)) }}
{{- end }}
{{- if $a.mtls.enabled }}
{{- $_ := set $auth "mtls" (dict "enabled" true) }}
{{- end }}
{{- $_ := set $config "auth" $auth }}
{{- end }}
{{- $config = mustMergeOverwrite $config (deepCopy $v.configOverrides) }}
{{- toYaml $config }}
{{- end }}

{{/*
Environment of every Quiver container; call with (dict "ctx" $ "component" "serving" "extraEnv" list).
Tracing settings go to the standard OTEL_* variables, which every OpenTelemetry SDK reads.
*/}}
{{- define "quiver.env" -}}
{{- $v := .ctx.Values }}
{{- $t := $v.telemetry.tracing -}}
- name: QUIVER_REPO
  value: {{ $v.featureRepo.mountPath | quote }}
- name: HOME
  value: /tmp
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if and (ne $v.onlineStore.type "sqlite") $v.aerospike.auth.user }}
- name: QUIVER_AEROSPIKE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.aerospike.auth.existingSecret }}
      key: {{ $v.aerospike.auth.passwordKey }}
{{- end }}
{{- if $t.enabled }}
{{- $serviceName := printf "%s-%s" $t.serviceName .component }}
- name: QUIVER_TELEMETRY__TRACING__SERVICE_NAME
  value: {{ $serviceName | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $serviceName | quote }}
{{- if $t.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.endpoint | quote }}
{{- end }}
{{- if ne $t.exporter "console" }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ ternary "grpc" "http/protobuf" (eq $t.exporter "otlp_grpc") | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplingRatio | toString | quote }}
{{- $attrs := list (printf "service.version=%s" .ctx.Chart.AppVersion) (printf "service.namespace=%s" $v.project) "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" }}
{{- range $key, $value := $t.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $key (toString $value)) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if $t.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $t.headersSecret.name }}
      key: {{ $t.headersSecret.key }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes shared by every pod. */}}
{{- define "quiver.volumes" -}}
{{- $v := .Values -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.tmpSizeLimit }}
- name: data
{{- if $v.persistence.volume }}
  {{- toYaml $v.persistence.volume | nindent 2 }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "quiver.claimName" . }}
{{- end }}
{{- if include "quiver.repoFromVolume" . }}
- name: feature-repo
  emptyDir: {}
- name: config
  configMap:
    name: {{ include "quiver.configMapName" . }}
- name: repo-source
  {{- toYaml $v.featureRepo.volume | nindent 2 }}
{{- else }}
- name: feature-repo
  projected:
    # The chart's ConfigMap comes last: on a duplicate file name (quiver.yaml) the later
    # source wins, so the rendered configuration is the one used.
    sources:
{{- if $v.featureRepo.existingConfigMap }}
      - configMap:
          name: {{ $v.featureRepo.existingConfigMap }}
{{- end }}
      - configMap:
          name: {{ include "quiver.configMapName" . }}
{{- end }}
{{- if and (ne $v.onlineStore.type "sqlite") $v.aerospike.tls.enabled }}
- name: aerospike-tls
  secret:
    secretName: {{ $v.aerospike.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.aerospike.tls.caKey }}
        path: ca.crt
{{- if $v.aerospike.tls.certKey }}
      - key: {{ $v.aerospike.tls.certKey }}
        path: tls.crt
      - key: {{ $v.aerospike.tls.keyKey }}
        path: tls.key
{{- end }}
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes of the serving and Flight pods only: the TLS certificate and the auth Secrets. */}}
{{- define "quiver.serverVolumes" -}}
{{- $v := .Values }}
{{- if $v.tls.enabled }}
- name: tls
  secret:
    secretName: {{ $v.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $v.tls.certKey }}
        path: tls.crt
      - key: {{ $v.tls.keyKey }}
        path: tls.key
      {{- with $v.tls.clientCaKey }}
      - key: {{ . }}
        path: client-ca.crt
      {{- end }}
{{- end }}
{{- if or (eq $v.auth.mode "static") (and (eq $v.auth.mode "oidc") $v.auth.oidc.caConfigMap) }}
- name: auth
  projected:
    defaultMode: 0440
    sources:
      {{- if eq $v.auth.mode "static" }}
      - secret:
          name: {{ $v.auth.static.existingSecret }}
          items:
            - key: {{ $v.auth.static.key }}
              path: tokens.yaml
      {{- else }}
      - configMap:
          name: {{ $v.auth.oidc.caConfigMap }}
          items:
            - key: {{ $v.auth.oidc.caKey }}
              path: oidc-ca.crt
      {{- end }}
{{- end }}
{{- end }}

{{- define "quiver.serverVolumeMounts" -}}
{{- $v := .Values }}
{{- if $v.tls.enabled }}
- name: tls
  mountPath: {{ $v.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if or (eq $v.auth.mode "static") (and (eq $v.auth.mode "oidc") $v.auth.oidc.caConfigMap) }}
- name: auth
  mountPath: {{ $v.auth.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "quiver.volumeMounts" -}}
{{- $v := .Values -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ $v.persistence.mountPath }}
- name: feature-repo
  mountPath: {{ $v.featureRepo.mountPath }}
  readOnly: true
{{- if and (ne $v.onlineStore.type "sqlite") $v.aerospike.tls.enabled }}
- name: aerospike-tls
  mountPath: {{ include "quiver.aerospikeTlsDir" . }}
  readOnly: true
{{- end }}
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
With definitions on a volume, an init container assembles the repo directory: the definition
files first (hidden entries such as .git skipped), then the chart's ConfigMap files on top, so
the chart's quiver.yaml always wins.
*/}}
{{- define "quiver.initContainers" -}}
{{- if include "quiver.repoFromVolume" . }}
{{- $v := .Values -}}
- name: feature-repo
  image: {{ include "quiver.image" . }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command:
    - python
    - -c
    - |
      import os, shutil, sys
      source, config, target = sys.argv[1:4]
      shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
      for name in os.listdir(config):
          if not name.startswith("."):
              shutil.copyfile(os.path.join(config, name), os.path.join(target, name))
    - {{ include "quiver.repoSourceDir" . | quote }}
    - {{ include "quiver.configDir" . | quote }}
    - {{ $v.featureRepo.mountPath | quote }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 50m
      memory: 64Mi
    limits:
      memory: 128Mi
  volumeMounts:
    - name: repo-source
      mountPath: {{ include "quiver.repoSourceDir" . }}
      readOnly: true
      {{- with $v.featureRepo.volumeSubPath }}
      subPath: {{ . }}
      {{- end }}
    - name: config
      mountPath: {{ include "quiver.configDir" . }}
      readOnly: true
    - name: feature-repo
      mountPath: {{ $v.featureRepo.mountPath }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every pod. */}}
{{- define "quiver.podCommon" -}}
serviceAccountName: {{ include "quiver.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll the pods when the rendered configuration changes. */}}
{{- define "quiver.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/*
Pod spec of a batch job; call with
(dict "ctx" $ "component" "materialize" "args" (list ...) "settings" .Values.materialize).
*/}}
{{- define "quiver.jobPodSpec" -}}
{{- $ctx := .ctx }}
{{- $settings := .settings }}
{{- include "quiver.podCommon" $ctx }}
restartPolicy: Never
{{- with (include "quiver.initContainers" $ctx) }}
initContainers:
  {{- . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "quiver.image" $ctx }}
    imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
    args:
      - --repo
      - {{ $ctx.Values.featureRepo.mountPath | quote }}
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
    env:
      {{- include "quiver.env" (dict "ctx" $ctx "component" .component "extraEnv" ($settings.extraEnv | default list)) | nindent 6 }}
    {{- with $ctx.Values.extraEnvFrom }}
    envFrom:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $ctx.Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml $settings.resources | nindent 6 }}
    volumeMounts:
      {{- include "quiver.volumeMounts" $ctx | nindent 6 }}
volumes:
  {{- include "quiver.volumes" $ctx | nindent 2 }}
{{- with $settings.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $settings.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $settings.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Egress rules when networkPolicy.egress.restrict is on. */}}
{{- define "quiver.egressRules" -}}
{{- $v := .Values }}
{{- $egress := $v.networkPolicy.egress -}}
# DNS, wherever the cluster runs it.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- if ne $v.onlineStore.type "sqlite" }}
{{- $ports := list }}
{{- range $v.aerospike.hosts }}
{{- $parts := splitList ":" . }}
{{- $port := ternary (last $parts) "3000" (gt (len $parts) 1) }}
{{- $ports = append $ports ($port | int) }}
{{- end }}
# Aerospike: the seed ports (every node of a cluster listens on the same port).
- ports:
    {{- range $ports | uniq }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $egress.aerospike }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if $v.telemetry.tracing.enabled }}
{{- $t := $v.telemetry.tracing }}
{{- $port := ternary 4317 4318 (eq $t.exporter "otlp_grpc") }}
{{- if $t.endpoint }}
{{- $hostParts := splitList ":" (urlParse $t.endpoint).host }}
{{- if gt (len $hostParts) 1 }}
{{- $port = last $hostParts | int }}
{{- end }}
{{- end }}
# OpenTelemetry collector.
- ports:
    - port: {{ $port }}
      protocol: TCP
  {{- with $egress.otlp }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $v.telemetry.metrics.pushgateway }}
# Prometheus Pushgateway (batch job metrics).
- ports:
    - port: {{ last (splitList ":" .) | int }}
      protocol: TCP
{{- end }}
{{- with $egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Checks that span several values, which values.schema.json cannot express. Included once, from
configmap.yaml, so `helm install` and `helm template` stop with the message.
*/}}
{{- define "quiver.validate" -}}
{{- $v := .Values }}
{{- $s := $v.serving }}
{{- if le (int $s.terminationGracePeriodSeconds) (add (int $s.preStopSleepSeconds) (ceil $s.graceSeconds | int)) }}
{{- fail (printf "serving.terminationGracePeriodSeconds (%v) must exceed serving.preStopSleepSeconds + serving.graceSeconds (%v + %v), or in-flight calls are cut off" $s.terminationGracePeriodSeconds $s.preStopSleepSeconds $s.graceSeconds) }}
{{- end }}
{{- if le (int $v.flight.terminationGracePeriodSeconds) (ceil $v.flight.graceSeconds | int) }}
{{- fail (printf "flight.terminationGracePeriodSeconds (%v) must exceed flight.graceSeconds (%v), or streams are cut off" $v.flight.terminationGracePeriodSeconds $v.flight.graceSeconds) }}
{{- end }}
{{- range $name := list "serving" "flight" }}
{{- $c := index $v $name }}
{{- if gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%v) must not exceed %s.autoscaling.maxReplicas (%v)" $name $c.autoscaling.minReplicas $name $c.autoscaling.maxReplicas) }}
{{- end }}
{{- if and $v.telemetry.metrics.enabled (eq (int $c.port) (int $v.telemetry.metrics.port)) }}
{{- fail (printf "%s.port and telemetry.metrics.port are both %v; they must differ" $name $c.port) }}
{{- end }}
{{- end }}
{{- if and (gt (int $s.healthPort) 0) (or (eq (int $s.healthPort) (int $s.port)) (and $v.telemetry.metrics.enabled (eq (int $s.healthPort) (int $v.telemetry.metrics.port)))) }}
{{- fail (printf "serving.healthPort (%v) must differ from serving.port and telemetry.metrics.port" $s.healthPort) }}
{{- end }}
{{- if and $v.tls.enabled (gt (int $s.healthPort) 0 | not) $s.enabled }}
{{- fail "with tls.enabled, kubelet's gRPC probes cannot reach the TLS port: set serving.healthPort" }}
{{- end }}
{{- if and $v.auth.mtls.enabled (not (and $v.tls.enabled $v.tls.clientCaKey)) }}
{{- fail "auth.mtls.enabled names principals by client certificate: set tls.enabled and tls.clientCaKey" }}
{{- end }}
{{- $f := $v.flight }}
{{- if or (eq (int $f.health.port) (int $f.port)) (and $v.telemetry.metrics.enabled (eq (int $f.health.port) (int $v.telemetry.metrics.port))) }}
{{- fail (printf "flight.health.port (%v) must differ from flight.port and telemetry.metrics.port" $f.health.port) }}
{{- end }}
{{- if and (eq $v.onlineStore.type "sqlite") $s.enabled (or $s.autoscaling.enabled (gt (int $s.replicaCount) 1)) }}
{{- fail "onlineStore.type sqlite is one file for one serving pod: set serving.replicaCount=1 and serving.autoscaling.enabled=false, or use Aerospike" }}
{{- end }}
{{- if and $v.spark.enabled $v.spark.materialize $v.materialize.enabled (eq $v.onlineStore.type "sqlite") }}
{{- fail "spark.materialize writes the online store from Spark executors, which cannot share the SQLite file: use onlineStore.type aerospike, or set spark.materialize=false" }}
{{- end }}
{{- end }}

{{/* The service account Spark's drivers run as. */}}
{{- define "quiver.sparkServiceAccountName" -}}
{{- if .Values.spark.serviceAccount.create }}
{{- default (printf "%s-spark" (include "quiver.fullname" .)) .Values.spark.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.spark.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "quiver.sparkTemplateDir" -}}/etc/quiver/spark{{- end }}

{{- define "quiver.sparkImage" -}}
{{- $i := .Values.spark.image }}
{{- if $i.digest }}
{{- printf "%s@%s" $i.repository $i.digest }}
{{- else }}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) }}
{{- end }}
{{- end }}

{{/*
Pod spec of a job that submits a Quiver command to Spark's Kubernetes scheduler in cluster mode:
the driver runs the command (`quiver_server.spark.submit`) in its own pod and starts executors;
call with (dict "ctx" $ "name" "materialize" "args" (list ...)).
*/}}
{{- define "quiver.sparkSubmitPodSpec" -}}
{{- $ctx := .ctx }}
{{- $s := $ctx.Values.spark }}
{{- $templates := include "quiver.sparkTemplateDir" $ctx }}
serviceAccountName: {{ include "quiver.sparkServiceAccountName" $ctx }}
automountServiceAccountToken: true
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
restartPolicy: Never
containers:
  - name: spark-submit
    image: {{ include "quiver.sparkImage" $ctx }}
    imagePullPolicy: {{ $s.image.pullPolicy }}
    command: ["spark-submit"]
    args:
      - --master
      - {{ $s.master | quote }}
      - --deploy-mode
      - cluster
      - --name
      - {{ printf "%s-%s" (include "quiver.fullname" $ctx) .name | quote }}
      {{- $conf := dict
          "spark.kubernetes.namespace" $ctx.Release.Namespace
          "spark.kubernetes.container.image" (include "quiver.sparkImage" $ctx)
          "spark.kubernetes.container.image.pullPolicy" $s.image.pullPolicy
          "spark.kubernetes.authenticate.driver.serviceAccountName" (include "quiver.sparkServiceAccountName" $ctx)
          "spark.kubernetes.driver.podTemplateFile" (printf "%s/driver.yaml" $templates)
          "spark.kubernetes.executor.podTemplateFile" (printf "%s/executor.yaml" $templates)
          "spark.driver.cores" (toString $s.driver.cores)
          "spark.driver.memory" $s.driver.memory
          "spark.executor.instances" (toString $s.executor.instances)
          "spark.executor.cores" (toString $s.executor.cores)
          "spark.executor.memory" $s.executor.memory }}
      {{- $conf = mustMergeOverwrite $conf (deepCopy $s.conf) }}
      {{- range $key := keys $conf | sortAlpha }}
      - --conf
      - {{ printf "%s=%s" $key (toString (get $conf $key)) | quote }}
      {{- end }}
      - local:///opt/quiver/lib/python3.11/site-packages/quiver_server/spark/submit.py
      - --repo
      - {{ $ctx.Values.featureRepo.mountPath | quote }}
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
    env:
      - name: HOME
        value: /tmp
    securityContext:
      {{- toYaml $ctx.Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml $s.resources | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: spark-pods
        mountPath: {{ $templates }}
        readOnly: true
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ $ctx.Values.tmpSizeLimit }}
  - name: spark-pods
    configMap:
      name: {{ include "quiver.fullname" $ctx }}-spark-pods
{{- end }}
