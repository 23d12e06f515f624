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

{{- define "tokenyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenyard.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repository := default $root.Values.image.repository $image.repository -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $image.tag -}}
{{- printf "%s:%s" $repository $tag -}}
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
{{- $modelKeys := list "name" "model" "kind" "dtype" "maxModelLen" "chatTemplate" "engineArgs" "aliases" "policy" -}}
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

{{/* The writable paths of a read-only root filesystem: /tmp and the user's home (caches of vLLM, Triton, torch). */}}
{{- define "tokenyard.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end -}}

{{- define "tokenyard.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/tokenyard
{{- end -}}
