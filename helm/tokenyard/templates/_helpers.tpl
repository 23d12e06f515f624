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
{{- define "tokenyard.routerConfigDir" -}}/etc/tokenyard/router{{- end -}}
{{- define "tokenyard.routerConfigPath" -}}{{ include "tokenyard.routerConfigDir" . }}/config.yaml{{- end -}}

{{/* The router's drain deadline: router.drainDeadlineSeconds, else drain.deadlineSeconds. */}}
{{- define "tokenyard.routerDrainDeadline" -}}
{{- $own := .Values.router.drainDeadlineSeconds -}}
{{- ternary $own .Values.drain.deadlineSeconds (not (kindIs "invalid" $own)) | int -}}
{{- end -}}

{{/* What of the router's config a running router does not reload: all but `routes` and `router`. */}}
{{- define "tokenyard.routerRestartConfig" -}}
{{- $config := fromYaml (index (fromYaml (include (print .Template.BasePath "/router-configmap.yaml") .)).data "config.yaml") -}}
{{- toYaml (omit $config "routes" "router") -}}
{{- end -}}
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

{{/*
The engine image of (list root image-override gpu): the override's fields, else `image`'s defaults for the
engine's kind: tag and digest for a CPU engine, gpuTag and gpuDigest (the CUDA image) for a GPU one. A
default digest applies only to an engine that names neither repository nor tag of its own, so it never
pins another image than the one it was taken from.
*/}}
{{- define "tokenyard.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $gpu := index . 2 -}}
{{- $top := $root.Values.image -}}
{{- $repository := default $top.repository $image.repository -}}
{{- $defaultTag := ternary (default (printf "%s-cuda" $root.Chart.AppVersion) $top.gpuTag) (default $root.Chart.AppVersion $top.tag) $gpu -}}
{{- $defaultDigest := ternary $top.gpuDigest $top.digest $gpu -}}
{{- $tag := default $defaultTag $image.tag -}}
{{- $digest := $image.digest | default (ternary "" (default "" $defaultDigest) (or (not (empty $image.repository)) (not (empty $image.tag)))) -}}
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
plus its merged engine settings, the names of its objects and what the chart derives for it
(tokenyard.engineDerived). Fails on names that clash and on settings that cannot work on a cluster.
*/}}
{{- define "tokenyard.engines" -}}
{{- $root := . -}}
{{- $fullname := include "tokenyard.fullname" $root -}}
{{- $engines := list -}}
{{- $seen := dict -}}
{{- $modelKeys := list "name" "model" "kind" "dtype" "maxModelLen" "chatTemplate" "engineArgs" "aliases" "policy" "toolParser" "kvTokenizer" "loraAdapters" "enableLora" "maxLoras" "maxLoraRank" "loraRuntimeLoad" "routeConfig" "media" -}}
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
{{- /* 54 leaves room for "-headless" and a pod's suffixes. A LeaderWorkerSet's worker pods carry a
     controller-revision-hash label of "<name>-<group>-<hash>" that must stay within 63 characters
     (kubernetes#64023, lws#991), so a multi-node model's names stop at 50. */ -}}
{{- $cap := ternary 50 54 (gt (int $settings.multiNode.nodes) 1) -}}
{{- $base := printf "%s-engine-%s" $fullname $slug -}}
{{- if gt (len $base) $cap -}}
{{- $base = printf "%s-%s" ($base | trunc (sub $cap 9 | int) | trimSuffix "-") ($base | sha256sum | trunc 8) -}}
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
      "media" (default (dict) $model.media)
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
{{- $entry = merge (fromYaml (include "tokenyard.engineDerived" (list $root $entry))) $entry -}}
{{- $engines = append $engines $entry -}}
{{- end -}}
{{- toYaml (dict "engines" $engines) -}}
{{- end -}}

{{/*
A Kubernetes quantity as a whole number of bytes (memory, storage): "141Gi", "150G", "1.5Ti", "512Mi".
*/}}
{{- define "tokenyard.bytes" -}}
{{- $text := toString . -}}
{{- $parts := regexFindAll "^([0-9]+)(\\.[0-9]+)?([a-zA-Z]*)$" $text 1 -}}
{{- if not $parts -}}
{{- fail (printf "%q is not a Kubernetes quantity" $text) -}}
{{- end -}}
{{- $whole := regexReplaceAll "^([0-9]+).*$" $text "${1}" -}}
{{- $fraction := regexReplaceAll "^[0-9]+(\\.([0-9]+))?[a-zA-Z]*$" $text "${2}" -}}
{{- $unit := regexReplaceAll "^[0-9.]+" $text "" -}}
{{- $factors := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 -}}
{{- if not (hasKey $factors $unit) -}}
{{- fail (printf "%q: unit %q is not one of a byte quantity's" $text $unit) -}}
{{- end -}}
{{- $factor := int64 (get $factors $unit) -}}
{{- $bytes := mul (atoi $whole) $factor -}}
{{- if $fraction -}}
{{- $bytes = add $bytes (div (mul (atoi $fraction) $factor) (int64 (printf "1%s" (repeat (len $fraction) "0")))) -}}
{{- end -}}
{{- $bytes -}}
{{- end -}}

{{/* A number of bytes as a quantity: whole Gi or Mi when it divides, else bytes. */}}
{{- define "tokenyard.quantity" -}}
{{- $bytes := int64 . -}}
{{- if eq (mod $bytes 1073741824) 0 -}}{{ div $bytes 1073741824 }}Gi
{{- else if eq (mod $bytes 1048576) 0 -}}{{ div $bytes 1048576 }}Mi
{{- else -}}{{ $bytes }}
{{- end -}}
{{- end -}}

{{/* A CPU quantity ("4", "500m", "1.5") in millicores. */}}
{{- define "tokenyard.millicores" -}}
{{- $text := toString . -}}
{{- if hasSuffix "m" $text -}}
{{- trimSuffix "m" $text | int64 -}}
{{- else -}}
{{- round (mulf (float64 $text) 1000) 0 | int64 -}}
{{- end -}}
{{- end -}}

{{/*
What the chart derives for one engine, given (list root entry), as YAML merged into the entry:
- hub: the model is a hub id (not builtin:*, not a path), downloaded at start into the model cache;
- strategy: the Deployment strategy (GPU engines and ReadWriteOnce caches: replace, never surge);
- shm: the size of /dev/shm; podResources: the engine container's resources (GPUs, shm, cache);
- startupSeconds (the start budget) with the resolved probes, downloadSeconds, coldStartSeconds and
  progressDeadline (the Deployment's progressDeadlineSeconds);
- fromZero, hold (the route's hold_timeout_s), cooldownPeriod and initialCooldownPeriod (KEDA);
- drainDeadline: the engine's drain deadline.
It refuses what cannot work: a ReadWriteOnce claim mounted by more than one pod, a hub model without a
cache sized for it, several GPUs without /dev/shm, KEDA's minimum above its maximum.
*/}}
{{- define "tokenyard.engineDerived" -}}
{{- $root := index . 0 -}}
{{- $e := index . 1 -}}
{{- $out := dict -}}
{{- $gpus := int $e.gpu.count -}}
{{- $nodes := int $e.multiNode.nodes -}}
{{- $cache := $e.modelCache -}}
{{- $model := toString $e.model -}}
{{- $hub := not (or (hasPrefix "builtin:" $model) (hasPrefix "/" $model) (hasPrefix "." $model)) -}}
{{- $_ := set $out "hub" $hub -}}
{{- $weights := 0 -}}
{{- with $cache.weightsSize }}{{ $weights = include "tokenyard.bytes" . | int64 }}{{ end -}}
{{- /* A hub model downloads into the cache: without one, or without a size to check it against, the
     weights would fill the pod's scratch home and get it evicted, and the next pod would start over. */ -}}
{{- if $hub -}}
{{- if eq $cache.type "none" -}}
{{- fail (printf "models: %q is a hub id (%s): its weights are downloaded at start, so it needs modelCache.type pvc or emptyDir (the pod's scratch home would overflow and the pod be evicted), and modelCache.weightsSize" $e.name $model) -}}
{{- end -}}
{{- if and (gt $nodes 1) (eq $cache.type "emptyDir") -}}
{{- fail (printf "models: %q is a hub id across %d nodes: its workers read the weights too, so the cache must be one claim they all mount (modelCache.type pvc, ReadWriteMany), not a per-pod emptyDir" $e.name $nodes) -}}
{{- end -}}
{{- if not $weights -}}
{{- fail (printf "models: %q is a hub id (%s): set modelCache.weightsSize to the size of its files (for example 141Gi for a 70B model in bf16), so the cache and the start budget can be sized for it" $e.name $model) -}}
{{- end -}}
{{- end -}}
{{- if $weights -}}
{{- $room := 0 -}}
{{- if eq $cache.type "pvc" -}}
{{- if not $cache.pvc.existingClaim }}{{ $room = include "tokenyard.bytes" $cache.pvc.size | int64 }}{{ end -}}
{{- else if eq $cache.type "emptyDir" -}}
{{- $room = include "tokenyard.bytes" (required "modelCache.emptyDir.sizeLimit is required with modelCache.weightsSize" $cache.emptyDir.sizeLimit) | int64 -}}
{{- end -}}
{{- if and $room (lt $room $weights) -}}
{{- fail (printf "models: %q: its model cache (%s) is smaller than modelCache.weightsSize (%s); give the claim or the emptyDir more room" $e.name (include "tokenyard.quantity" $room) $cache.weightsSize) -}}
{{- end -}}
{{- end -}}

{{- /* Rollouts. With GPUs (or a claim one pod at a time may mount) a surge pod waits for GPUs nobody
     frees, so the default replaces one pod at a time instead. */ -}}
{{- $rwo := and (eq $cache.type "pvc") (not $cache.pvc.existingClaim) (or (has "ReadWriteOnce" $cache.pvc.accessModes) (has "ReadWriteOncePod" $cache.pvc.accessModes)) -}}
{{- $strategy := deepCopy (default (dict) $e.strategy) -}}
{{- if and (not $strategy) (or (gt $gpus 0) $rwo) -}}
{{- $strategy = dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" 0 "maxUnavailable" 1) -}}
{{- end -}}
{{- $_ := set $out "strategy" $strategy -}}
{{- $surge := true -}}
{{- if eq (toString (default "RollingUpdate" $strategy.type)) "Recreate" -}}
{{- $surge = false -}}
{{- else if $strategy.rollingUpdate -}}
{{- if hasKey $strategy.rollingUpdate "maxSurge" -}}
{{- $surge = not (or (eq (toString $strategy.rollingUpdate.maxSurge) "0") (eq (toString $strategy.rollingUpdate.maxSurge) "0%")) -}}
{{- end -}}
{{- end -}}
{{- if gt $nodes 1 }}{{ $surge = false }}{{ end -}}

{{- /* A ReadWriteOnce claim attaches to one node: every pod past the first (replicas, the autoscaler's
     maximum, a surge pod, the workers of a multi-node group) would wait on a Multi-Attach error. */ -}}
{{- if $rwo -}}
{{- $most := int $e.replicaCount -}}
{{- if $e.keda.enabled }}{{ $most = int $e.keda.maxReplicaCount }}{{ end -}}
{{- $why := "" -}}
{{- if gt $most 1 }}{{ $why = printf "it may run %d pods (replicaCount, or keda.maxReplicaCount)" $most }}
{{- else if gt $nodes 1 }}{{ $why = printf "its group has %d pods (multiNode.nodes)" $nodes }}
{{- else if $surge }}{{ $why = "its rollout adds a surge pod (strategy)" }}{{ end -}}
{{- if $why -}}
{{- fail (printf "models: %q: its model cache claim is %s, which one node at a time may mount, but %s; use accessModes [ReadWriteMany] (or an existingClaim that is), or one pod with strategy maxSurge 0" $e.name (join "/" $cache.pvc.accessModes) $why) -}}
{{- end -}}
{{- end -}}

{{- /* /dev/shm: vLLM's workers and NCCL exchange tensors there, and the runtime's own is 64 MiB. */ -}}
{{- $shm := toString (default "" $e.shmSizeLimit) -}}
{{- if eq $shm "auto" -}}
{{- $shm = ternary (printf "%dGi" (mul 4 $gpus)) "1Gi" (gt $gpus 0) -}}
{{- end -}}
{{- if and (gt $gpus 1) (not $shm) -}}
{{- fail (printf "models: %q: %d GPUs need a shared /dev/shm (NCCL fails on the runtime's 64 MiB): set shmSizeLimit, or auto" $e.name $gpus) -}}
{{- end -}}
{{- $_ := set $out "shm" $shm -}}

{{- /* Resources: what is given, over the CPU defaults or the GPU defaults times the GPUs. Then the
     GPUs, the memory-backed /dev/shm (it counts as the container's memory) and an emptyDir cache (it
     counts as the pod's local storage) are added, so that neither gets the pod killed or evicted. */ -}}
{{- $base := deepCopy $e.cpuResources -}}
{{- if gt $gpus 0 -}}
{{- $base = dict -}}
{{- range $side, $amounts := $e.gpuResources -}}
{{- $scaled := dict -}}
{{- range $name, $amount := $amounts -}}
{{- if eq $name "cpu" -}}
{{- $millicores := mul (include "tokenyard.millicores" $amount | int64) $gpus -}}
{{- $_ := set $scaled $name (ternary (printf "%d" (div $millicores 1000)) (printf "%dm" $millicores) (eq (mod $millicores 1000) 0)) -}}
{{- else if eq $name "memory" -}}
{{- $_ := set $scaled $name (include "tokenyard.quantity" (mul (include "tokenyard.bytes" $amount | int64) $gpus)) -}}
{{- else -}}
{{- $_ := set $scaled $name $amount -}}
{{- end -}}
{{- end -}}
{{- $_ := set $base $side $scaled -}}
{{- end -}}
{{- end -}}
{{- $resources := fromYaml (include "tokenyard.merge" (list $base (default (dict) $e.resources))) -}}
{{- $limits := default (dict) (get $resources "limits") -}}
{{- $requests := default (dict) (get $resources "requests") -}}
{{- if gt $gpus 0 -}}
{{- $_ := set $limits $e.gpu.resourceName $gpus -}}
{{- $_ := set $requests $e.gpu.resourceName $gpus -}}
{{- end -}}
{{- if and $shm (hasKey $limits "memory") -}}
{{- $_ := set $limits "memory" (include "tokenyard.quantity" (add (include "tokenyard.bytes" $limits.memory | int64) (include "tokenyard.bytes" $shm | int64))) -}}
{{- end -}}
{{- if and (eq $cache.type "emptyDir") $cache.emptyDir.sizeLimit -}}
{{- $size := include "tokenyard.bytes" $cache.emptyDir.sizeLimit | int64 -}}
{{- range $side := list $limits $requests -}}
{{- if hasKey $side "ephemeral-storage" -}}
{{- $_ := set $side "ephemeral-storage" (include "tokenyard.quantity" (add (include "tokenyard.bytes" (get $side "ephemeral-storage") | int64) $size)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $limits }}{{ $_ := set $resources "limits" $limits }}{{ end -}}
{{- if $requests }}{{ $_ := set $resources "requests" $requests }}{{ end -}}
{{- $_ := set $out "podResources" $resources -}}

{{- /* The start budget: the startup probe waits this long for the weights to load and the engine to
     compile and warm up; a multi-node leader first waits for its workers. The download of a hub model
     runs before, in an init container, where no probe runs. */ -}}
{{- $startup := $e.startup -}}
{{- $probe := deepCopy $e.probes.startup -}}
{{- $period := int (default 10 $probe.periodSeconds) -}}
{{- $seconds := int $startup.seconds -}}
{{- if not $seconds -}}
{{- if $probe.failureThreshold -}}
{{- $seconds = add (default 0 $probe.initialDelaySeconds) (mul $probe.failureThreshold $period) | int -}}
{{- else -}}
{{- $seconds = int $startup.baseSeconds -}}
{{- if $weights }}{{ $seconds = add $seconds (div (add $weights (sub (mul (int64 $startup.loadMegabytesPerSecond) 1000000) 1)) (mul (int64 $startup.loadMegabytesPerSecond) 1000000)) | int }}{{ end -}}
{{- if gt $nodes 1 }}{{ $seconds = add $seconds (int $e.multiNode.joinSeconds) | int }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if and $hub (not $cache.download) (not $startup.seconds) (not $probe.failureThreshold) -}}
{{- /* No init container: the engine downloads the model itself, under its startup probe. */ -}}
{{- $rate := mul (int64 $startup.downloadMegabytesPerSecond) 1000000 -}}
{{- $seconds = add $seconds (div (add $weights (sub $rate 1)) $rate) | int -}}
{{- end -}}
{{- if not $probe.failureThreshold -}}
{{- $_ := set $probe "failureThreshold" (div (add (sub $seconds (default 0 $probe.initialDelaySeconds)) (sub $period 1)) $period | int) -}}
{{- end -}}
{{- $seconds = add (default 0 $probe.initialDelaySeconds) (mul $probe.failureThreshold $period) | int -}}
{{- $_ := set $out "startupSeconds" $seconds -}}
{{- $_ := set $out "probes" (dict "startup" $probe "readiness" $e.probes.readiness "liveness" $e.probes.liveness) -}}
{{- $download := 0 -}}
{{- if and $hub $cache.download -}}
{{- $rate := mul (int64 $startup.downloadMegabytesPerSecond) 1000000 -}}
{{- $download = div (add $weights (sub $rate 1)) $rate | int -}}
{{- end -}}
{{- $_ := set $out "downloadSeconds" $download -}}
{{- /* A cold start: scheduling and the image pull (600 s), then the start. The first rollout downloads too. */ -}}
{{- $cold := add $seconds 600 | int -}}
{{- $_ := set $out "coldStartSeconds" $cold -}}
{{- $deadline := add $cold $download | int -}}
{{- if $e.progressDeadlineSeconds -}}
{{- if lt (int $e.progressDeadlineSeconds) $seconds -}}
{{- fail (printf "models: %q: progressDeadlineSeconds %v is shorter than the startup probe's budget of %v s (initialDelaySeconds + failureThreshold x periodSeconds); raise it, or set 0 to derive it" $e.name $e.progressDeadlineSeconds $seconds) -}}
{{- end -}}
{{- $deadline = int $e.progressDeadlineSeconds -}}
{{- end -}}
{{- $_ := set $out "progressDeadline" $deadline -}}

{{- /* Scale from zero: the router holds a request, and KEDA keeps a starting engine, for a whole cold start. */ -}}
{{- $keda := $e.keda -}}
{{- $fromZero := and $keda.enabled (eq (int $keda.minReplicaCount) 0) -}}
{{- if $keda.enabled -}}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) -}}
{{- fail (printf "models: %q: keda.minReplicaCount %v is above keda.maxReplicaCount %v" $e.name $keda.minReplicaCount $keda.maxReplicaCount) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out "fromZero" $fromZero -}}
{{- $_ := set $out "cooldownPeriod" (ternary $keda.cooldownPeriod (ternary $cold 300 $fromZero) (not (kindIs "invalid" $keda.cooldownPeriod))) -}}
{{- $_ := set $out "initialCooldownPeriod" (ternary $keda.initialCooldownPeriod (ternary $cold 0 $fromZero) (not (kindIs "invalid" $keda.initialCooldownPeriod))) -}}
{{- if $fromZero }}{{ $_ := set $out "hold" $cold }}{{ end -}}
{{- $_ := set $out "drainDeadline" (ternary $e.drainDeadlineSeconds $root.Values.drain.deadlineSeconds (not (kindIs "invalid" $e.drainDeadlineSeconds))) -}}
{{- toYaml $out -}}
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

{{/* The egress rule to the cluster's DNS (networkPolicy.egress.dnsTo), UDP and TCP 53. */}}
{{- define "tokenyard.dnsEgress" -}}
# DNS, to find the engines (headless Services), the hub and every other name.
- to:
    {{- toYaml .Values.networkPolicy.egress.dnsTo | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}
