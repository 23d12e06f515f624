{{/*
Names. The full name is kept to 40 characters so that "-router", "-engine-<model>" and
"-headless" still fit in a 63-character DNS label.
*/}}
{{- define "tokenyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokenyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tokenyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokenyard.routerName" -}}
{{- printf "%s-router" (include "tokenyard.fullname" .) -}}
{{- end -}}

{{- define "tokenyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tokenyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenyard.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "tokenyard.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{- define "tokenyard.apiKeysEnabled" -}}
{{- if or .Values.apiKeys.keys .Values.apiKeys.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "tokenyard.internalKeySecretName" -}}
{{- default (printf "%s-internal-key" (include "tokenyard.fullname" .)) .Values.internalKey.existingSecret -}}
{{- end -}}

{{/* Where engines and the router read the internal key: a directory mount (no subPath), so updates arrive. */}}
{{- define "tokenyard.internalKeyDir" -}}/etc/tokenyard/internal{{- end -}}
{{- define "tokenyard.internalKeyPath" -}}{{ include "tokenyard.internalKeyDir" . }}/internal-key{{- end -}}

{{- define "tokenyard.internalKeyMount" -}}
{{- if .Values.internalKey.enabled }}
- name: internal-key
  mountPath: {{ include "tokenyard.internalKeyDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tokenyard.internalKeyVolume" -}}
{{- if .Values.internalKey.enabled }}
- name: internal-key
  secret:
    secretName: {{ include "tokenyard.internalKeySecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.internalKey.secretKey }}
        path: internal-key
{{- end }}
{{- end -}}

{{/* Where the router reads its config and the API keys; the file layout is part of the router's contract. */}}
{{- define "tokenyard.configPath" -}}/etc/tokenyard/config.yaml{{- end -}}
{{- define "tokenyard.keysDir" -}}/etc/tokenyard/keys{{- end -}}
{{- define "tokenyard.keysFile" -}}api-keys{{- end -}}
{{- define "tokenyard.containerPort" -}}8000{{- end -}}

{{- define "tokenyard.labels" -}}
helm.sh/chart: {{ include "tokenyard.chart" . }}
{{ include "tokenyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of pod templates: no helm.sh/chart and no app.kubernetes.io/version, which change with every chart
release and would restart every pod (a model load on each GPU engine) though nothing in the pod changed.
*/}}
{{- define "tokenyard.podLabels" -}}
{{ include "tokenyard.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tokenyard.routerServiceAccountName" -}}
{{- $sa := .Values.router.serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "tokenyard.routerName" .) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* repository[:tag][@digest], given (list repository tag digest); a digest pins the image whatever the tag says. */}}
{{- define "tokenyard.imageRef" -}}
{{- $repository := index . 0 -}}
{{- $tag := index . 1 -}}
{{- $digest := index . 2 -}}
{{- $repository -}}{{- with $tag -}}:{{ . }}{{- end -}}{{- with $digest -}}@{{ . }}{{- end -}}
{{- end -}}

{{/* The engine image of (list root image-override): the override's fields, else `image`'s. */}}
{{- define "tokenyard.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $top := $root.Values.image -}}
{{- $repository := default $top.repository $image.repository -}}
{{- $tag := default (default $root.Chart.AppVersion $top.tag) $image.tag -}}
{{- $digest := $image.digest | default (ternary "" (default "" $top.digest) (not (empty $image.repository))) -}}
{{- include "tokenyard.imageRef" (list $repository $tag $digest) -}}
{{- end -}}

{{/* The router image (Dockerfile.router): router.image, else "<image.repository>-router" at the appVersion. */}}
{{- define "tokenyard.routerImage" -}}
{{- $image := .Values.router.image -}}
{{- $repository := default (printf "%s-router" .Values.image.repository) $image.repository -}}
{{- include "tokenyard.imageRef" (list $repository (default .Chart.AppVersion $image.tag) $image.digest) -}}
{{- end -}}

{{/*
Deep merge of two maps given as (list base override): a key set in override replaces the base
value, even with false, 0 or an empty list; maps are merged key by key. Sprig's mergeOverwrite
would skip such "empty" overrides, so a model could never turn off a default.
*/}}
{{- define "tokenyard.merge" -}}
{{- $out := deepCopy (index . 0) -}}
{{- range $key, $value := index . 1 -}}
{{- $current := get $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (fromYaml (include "tokenyard.merge" (list $current $value))) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The engines, one entry per model, as YAML: {engines: [...]}. Each entry holds the model's own keys
plus its merged engine settings and the names of its objects. Fails on names that clash.
*/}}
{{- define "tokenyard.engines" -}}
{{- $root := . -}}
{{- $fullname := include "tokenyard.fullname" $root -}}
{{- $engines := list -}}
{{- $seen := dict -}}
{{- $modelKeys := list "name" "model" "kind" "dtype" "maxModelLen" "chatTemplate" "engineArgs" "aliases" "policy" "toolParser" "kvTokenizer" "loraAdapters" "enableLora" "maxLoras" "maxLoraRank" "loraRuntimeLoad" "routeConfig" -}}
{{- range $model := $root.Values.models -}}
{{- $overrides := dict -}}
{{- range $key, $value := $model -}}
{{- if not (has $key $modelKeys) -}}
{{- $_ := set $overrides $key $value -}}
{{- end -}}
{{- end -}}
{{- $settings := fromYaml (include "tokenyard.merge" (list $root.Values.engineDefaults $overrides)) -}}
{{- $slug := regexReplaceAll "[^a-z0-9]+" ($model.name | lower) "-" | trimAll "-" | trunc 63 | trimSuffix "-" -}}
{{- if not $slug -}}
{{- fail (printf "models: %q gives no usable Kubernetes name; use letters or digits" $model.name) -}}
{{- end -}}
{{- $base := printf "%s-engine-%s" $fullname $slug -}}
{{- if gt (len $base) 54 -}}
{{- $base = printf "%s-%s" ($base | trunc 45 | trimSuffix "-") ($base | sha256sum | trunc 8) -}}
{{- end -}}
{{- if hasKey $seen $base -}}
{{- fail (printf "models: %q and %q map to the same Kubernetes name %q; rename one" (get $seen $base) $model.name $base) -}}
{{- end -}}
{{- $_ := set $seen $base $model.name -}}
{{- $entry := merge (dict
      "name" $model.name
      "model" $model.model
      "kind" (default "generate" $model.kind)
      "dtype" (default "auto" $model.dtype)
      "maxModelLen" $model.maxModelLen
      "chatTemplate" $model.chatTemplate
      "engineArgs" (default (dict) $model.engineArgs)
      "aliases" (default (list) $model.aliases)
      "policy" (default $root.Values.router.policy $model.policy)
      "toolParser" $model.toolParser
      "kvTokenizer" $model.kvTokenizer
      "loraAdapters" (default (list) $model.loraAdapters)
      "enableLora" (default false $model.enableLora)
      "maxLoras" $model.maxLoras
      "maxLoraRank" $model.maxLoraRank
      "loraRuntimeLoad" (default false $model.loraRuntimeLoad)
      "routeConfig" (default (dict) $model.routeConfig)
      "slug" $slug
      "fullname" $base
      "headless" (printf "%s-headless" $base)
      "dnsName" (printf "%s-headless.%s.svc.%s" $base $root.Release.Namespace $root.Values.clusterDomain)
    ) $settings -}}
{{- $engines = append $engines $entry -}}
{{- end -}}
{{- toYaml (dict "engines" $engines) -}}
{{- end -}}

{{- define "tokenyard.engineSelectorLabels" -}}
{{- $root := index . 0 -}}
{{- $engine := index . 1 -}}
{{ include "tokenyard.selectorLabels" $root }}
app.kubernetes.io/component: engine
tokenyard/model: {{ $engine.slug | quote }}
{{- end -}}

{{- define "tokenyard.routerSelectorLabels" -}}
{{ include "tokenyard.selectorLabels" . }}
app.kubernetes.io/component: router
{{- end -}}

{{/* terminationGracePeriodSeconds: the preStop sleep, then the drain, then a margin. */}}
{{- define "tokenyard.terminationGracePeriodSeconds" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.deadlineSeconds .Values.drain.extraGraceSeconds -}}
{{- end -}}

{{- define "tokenyard.probes" -}}
{{- $probes := index . 0 -}}
startupProbe:
  httpGet:
    path: /health
    port: http
  {{- toYaml $probes.startup | nindent 2 }}
readinessProbe:
  httpGet:
    path: /ready
    port: http
  {{- toYaml $probes.readiness | nindent 2 }}
livenessProbe:
  httpGet:
    path: /health
    port: http
  {{- toYaml $probes.liveness | nindent 2 }}
{{- end -}}

{{- define "tokenyard.lifecycle" -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.drain.preStopSleepSeconds }}"]
{{- end -}}

{{/*
The writable paths of a read-only root filesystem, given a `scratch` value: /tmp and the user's home (caches
of vLLM, Triton, torch), each with a size limit so that a runaway cache evicts its pod, not its node's others.
*/}}
{{- define "tokenyard.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
- name: home
  emptyDir:
    sizeLimit: {{ .homeSizeLimit }}
{{- end -}}

{{/* Anti-affinity of the router's pods (router.podAntiAffinity: soft, hard or none), when no affinity is set. */}}
{{- define "tokenyard.routerAffinity" -}}
{{- $mode := .Values.router.podAntiAffinity -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (fromYaml (include "tokenyard.routerSelectorLabels" .))) -}}
{{- if .Values.router.affinity -}}
{{- toYaml .Values.router.affinity -}}
{{- else if eq $mode "soft" -}}
{{- toYaml (dict "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term)))) -}}
{{- else if eq $mode "hard" -}}
{{- toYaml (dict "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term))) -}}
{{- end -}}
{{- end -}}

{{- define "tokenyard.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/tokenyard
{{- end -}}

{{/* "true" when the ServiceMonitor is rendered: enabled, and the cluster serves its API (or force is set). */}}
{{- define "tokenyard.serviceMonitorRendered" -}}
{{- $sm := .Values.serviceMonitor -}}
{{- if and $sm.enabled (or $sm.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}true{{- end -}}
{{- end -}}

{{/*
The KEDA triggers of one engine, given (list root engine), as YAML {triggers: [...]}; empty when KEDA is
off or when no trigger can have a series. Two triggers, not one combined query: KEDA's HPA scales to
the larger of their replica counts and the ScaledObject is active while either is, so each query stays
a plain sum and one series being absent (KEDA reads an empty result as 0) cannot hide the other.
- router: the requests the router holds or queues for this model (tokenyard_route_waiting_requests,
  summed over router pods, as the ServiceMonitor scrapes them from the router Service). The router
  holds a request for a model with no ready engine, so this series exists at zero engine pods: it is
  what scales an engine from 0 to 1. Its `model` label is the route's name, which is the model's name.
- router-in-flight, with the router trigger: the model's requests running on an engine now
  (tokenyard_route_in_flight_requests). Its threshold is so high that it never asks for more than one
  pod; it is there so that the ScaledObject stays active, and an engine is not scaled to zero, while
  requests still run on it but none waits.
- engine: vLLM's own queue on the model's engine pods (vllm:num_requests_waiting), which drives
  1 -> N. Embedding engines publish no vllm:* metrics, so an embed model gets it only with a query of
  its own; with the router trigger off as well, it renders no ScaledObject and keeps replicaCount.
*/}}
{{- define "tokenyard.kedaTriggers" -}}
{{- $root := index . 0 -}}
{{- $engine := index . 1 -}}
{{- $keda := $engine.keda -}}
{{- $triggers := list -}}
{{- if $keda.enabled -}}
{{- $router := $keda.routerTrigger -}}
{{- if $router.enabled -}}
{{- $query := printf "sum(tokenyard_route_waiting_requests{namespace=%q, service=%q, model=%q})" $root.Release.Namespace (include "tokenyard.routerName" $root) $engine.name -}}
{{- $triggers = append $triggers (merge (dict "name" "router-queue" "query" (default $query $router.query)) $router) -}}
{{- $busy := printf "sum(tokenyard_route_in_flight_requests{namespace=%q, service=%q, model=%q})" $root.Release.Namespace (include "tokenyard.routerName" $root) $engine.name -}}
{{- $triggers = append $triggers (dict "name" "router-in-flight" "query" $busy "threshold" "1000000" "activationThreshold" "0") -}}
{{- end -}}
{{- $own := $keda.engineTrigger -}}
{{- if and $own.enabled (or (eq $engine.kind "generate") $own.query) -}}
{{- $query := printf "sum(vllm:num_requests_waiting{namespace=%q, service=%q, model_name=%q})" $root.Release.Namespace $engine.headless $engine.name -}}
{{- $triggers = append $triggers (merge (dict "name" "engine-queue" "query" (default $query $own.query)) $own) -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "triggers" $triggers) -}}
{{- end -}}

{{/*
progressDeadlineSeconds of an engine: its own value, or the startup probe's whole budget plus 600 s for
scheduling, the image pull and the model preparation, so that a slow model load is not reported as a
failed rollout (by Helm --wait or Argo CD) while the probe would still wait for it.
*/}}
{{- define "tokenyard.progressDeadlineSeconds" -}}
{{- $startup := .probes.startup -}}
{{- $budget := add (default 0 $startup.initialDelaySeconds) (mul (default 3 $startup.failureThreshold) (default 10 $startup.periodSeconds)) -}}
{{- if .progressDeadlineSeconds -}}
{{- if lt (int .progressDeadlineSeconds) (int $budget) -}}
{{- fail (printf "models: %q: progressDeadlineSeconds %v is shorter than the startup probe's budget of %v s (initialDelaySeconds + failureThreshold x periodSeconds); raise it, or set 0 to derive it" .name .progressDeadlineSeconds $budget) -}}
{{- end -}}
{{- .progressDeadlineSeconds -}}
{{- else -}}
{{- add $budget 600 -}}
{{- end -}}
{{- end -}}

{{/* The OpenTelemetry variables of a container, given (list $ serviceName), while tracing is on. */}}
{{- define "tokenyard.tracingEnv" -}}
{{- $root := index . 0 -}}
{{- with $root.Values.tracing -}}
{{- if .enabled }}
- name: OTEL_SERVICE_NAME
  value: {{ index $ 1 | quote }}
{{- with .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with .samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* An engine's KV-event ports as container or Service ports, given (list <engine> "containerPort"|"port"). */}}
{{- define "tokenyard.kvEventPorts" -}}
{{- $engine := index . 0 -}}
{{- $field := index . 1 -}}
{{- if $engine.kvEvents.enabled }}
- name: kv-events
  {{ $field }}: {{ int $engine.kvEvents.port }}
  protocol: TCP
{{- with int $engine.kvEvents.replayPort }}
- name: kv-replay
  {{ $field }}: {{ . }}
  protocol: TCP
{{- end }}
{{- end }}
{{- end -}}
