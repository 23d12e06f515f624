{{/*
The pod template of an engine, given (dict "root" $ "engine" <engine> "role" <role>): role "engine" (a
Deployment's pod: tokenyard serves the model), "leader" (a multi-node model's leader: the Ray head, then
tokenyard serving the model over the whole group) or "worker" (a Ray worker that joins its leader).
*/}}
{{- define "tokenyard.enginePod" -}}
{{- $root := .root -}}
{{- $engine := .engine -}}
{{- $role := .role -}}
{{- $cache := $engine.modelCache -}}
{{- $cached := ne $cache.type "none" -}}
{{- $prepare := and $cached $cache.prepare (hasPrefix "builtin:" $engine.model) -}}
{{- $image := include "tokenyard.image" (list $root $engine.image (gt (int $engine.gpu.count) 0)) -}}
{{- $pullPolicy := default $root.Values.image.pullPolicy $engine.image.pullPolicy -}}
{{- $download := and $cached $engine.hub $cache.download (ne $role "worker") -}}
{{- "" }}
metadata:
  labels:
    {{- include "tokenyard.podLabels" $root | nindent 4 }}
    app.kubernetes.io/component: engine
    tokenyard/model: {{ $engine.slug | quote }}
    {{- with $engine.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A change to the engine's config file rolls its pods, and only its pods (a restart costs a model
    # load); everything else the pod reads is in this template. Values only the router reads do not count.
    checksum/config: {{ include "tokenyard.engineConfig" (list $root $engine) | sha256sum }}
    {{- with $engine.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "tokenyard.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $engine.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with $engine.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ add $root.Values.drain.preStopSleepSeconds $engine.drainDeadline $root.Values.drain.extraGraceSeconds }}
  {{- if or $prepare $download }}
  initContainers:
  {{- end }}
  {{- if $download }}
    # Downloads the model from the hub into the cache before the engine starts: no probe runs here, a
    # restart resumes where the last one stopped, and the progress is in this container's log.
    - name: download-model
      image: {{ $image | quote }}
      imagePullPolicy: {{ $pullPolicy }}
      command:
        - python
        - -c
        - |
          import json, os
          from huggingface_hub import snapshot_download
          print("downloading", os.environ["MODEL_ID"], "into", os.environ["HF_HOME"], flush=True)
          path = snapshot_download(os.environ["MODEL_ID"], ignore_patterns=json.loads(os.environ["IGNORE_PATTERNS"]) or None)
          print("downloaded", os.environ["MODEL_ID"], "to", path, flush=True)
      env:
        - name: MODEL_ID
          value: {{ $engine.model | quote }}
        - name: IGNORE_PATTERNS
          value: {{ toJson $cache.downloadIgnorePatterns | quote }}
        - name: HF_HOME
          value: {{ printf "%s/huggingface" $cache.mountPath | quote }}
        {{- with $engine.hfTokenSecret }}
        {{- if .name }}
        - name: HF_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ .name }}
              key: {{ .key }}
        {{- end }}
        {{- end }}
      resources:
        {{- toYaml $cache.prepareResources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: model-cache
          mountPath: {{ $cache.mountPath }}
        {{- include "tokenyard.scratchMounts" $root | nindent 8 }}
  {{- end }}
  {{- if $prepare }}
    # Prepares the builtin:* models into the cache volume, so the engine starts on a ready cache.
    - name: prepare-model
      image: {{ $image | quote }}
      imagePullPolicy: {{ $pullPolicy }}
      command: ["python", "-m", "gateway.model_store", "--cache-dir", {{ $cache.mountPath | quote }}]
      env:
        - name: TOKENYARD_CACHE_DIR
          value: {{ $cache.mountPath | quote }}
      resources:
        {{- toYaml $cache.prepareResources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: model-cache
          mountPath: {{ $cache.mountPath }}
        {{- include "tokenyard.scratchMounts" $root | nindent 8 }}
  {{- end }}
  containers:
    - name: engine
      image: {{ $image | quote }}
      imagePullPolicy: {{ $pullPolicy }}
      {{- if eq $role "engine" }}
      command: ["tokenyard", "serve", "--config", {{ include "tokenyard.configPath" $root | quote }}]
      {{- else }}
      command:
        - bash
        - -ec
        - {{ include "tokenyard.rayCommand" (dict "root" $root "engine" $engine "role" $role) | quote }}
      {{- end }}
      {{- if ne $role "worker" }}
      ports:
        - name: http
          containerPort: {{ include "tokenyard.containerPort" $root }}
          protocol: TCP
        {{- include "tokenyard.kvEventPorts" (list $engine "containerPort") | nindent 8 }}
      {{- end }}
      {{- $loraAdmin := and $engine.loraRuntimeLoad $root.Values.internalKey.enabled }}
      {{- if or $cached $engine.hfTokenSecret.name $engine.extraEnv $root.Values.tracing.enabled $loraAdmin }}
      env:
        {{- if $cached }}
        # The environment outranks the config file, so the image's own cache dir must be replaced here.
        - name: TOKENYARD_CACHE_DIR
          value: {{ $cache.mountPath | quote }}
        # Weights fetched from a model hub land on the cache volume too, not in the pod's scratch home.
        - name: HF_HOME
          value: {{ printf "%s/huggingface" $cache.mountPath | quote }}
        # vLLM's torch.compile cache too: a restart reuses it instead of compiling for minutes again.
        - name: VLLM_CACHE_ROOT
          value: {{ printf "%s/vllm" $cache.mountPath | quote }}
        {{- if and $engine.hub $cache.download }}
        # The init container downloaded the model; the engine reads it from the cache alone.
        - name: HF_HUB_OFFLINE
          value: "1"
        {{- end }}
        {{- end }}
        {{- with $engine.hfTokenSecret }}
        {{- if .name }}
        # The hub token is only ever a reference to a Secret, never a value in the chart.
        - name: HF_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ .name }}
              key: {{ .key }}
        {{- end }}
        {{- end }}
        {{- if $loraAdmin }}
        # With keys on, the runtime LoRA routes need the admin key: the router's, the internal key.
        - name: TOKENYARD_AUTH__ADMIN_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "tokenyard.internalKeySecretName" $root }}
              key: {{ $root.Values.internalKey.secretKey }}
        {{- end }}
        {{- include "tokenyard.tracingEnv" (list $root $engine.fullname) | nindent 8 }}
        {{- with $engine.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with $engine.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if ne $role "worker" }}
      {{- include "tokenyard.probes" (list $engine.probes) | nindent 6 }}
      {{- include "tokenyard.lifecycle" $root | nindent 6 }}
      {{- end }}
      resources:
        {{- toYaml $engine.podResources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "tokenyard.configPath" $root }}
          subPath: config.yaml
          readOnly: true
        {{- if ne $role "worker" }}
        {{- include "tokenyard.internalKeyMount" $root | nindent 8 }}
        {{- end }}
        {{- include "tokenyard.scratchMounts" $root | nindent 8 }}
        {{- if $engine.shm }}
        - name: shm
          mountPath: /dev/shm
        {{- end }}
        {{- if $cached }}
        - name: model-cache
          mountPath: {{ $cache.mountPath }}
        {{- end }}
        {{- with $engine.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ $engine.fullname }}-config
    {{- if ne $role "worker" }}
    {{- include "tokenyard.internalKeyVolume" $root | nindent 4 }}
    {{- end }}
    {{- include "tokenyard.scratchVolumes" $engine.scratch | nindent 4 }}
    {{- with $engine.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $engine.shm }}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ . }}
    {{- end }}
    {{- if eq $cache.type "emptyDir" }}
    - name: model-cache
      emptyDir:
        {{- with $cache.emptyDir.sizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- else if eq $cache.type "pvc" }}
    - name: model-cache
      persistentVolumeClaim:
        claimName: {{ default (printf "%s-models" $engine.fullname) $cache.pvc.existingClaim }}
    {{- end }}
  {{- with $engine.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $engine.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $engine.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $engine.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
The shell command of a multi-node model's pods. The leader starts the Ray head, waits until every worker
of its group has joined (all nodes x gpu.count GPUs), then serves the model with vLLM's Ray executor
(tensor parallel inside a node, pipeline parallel across nodes). A worker joins the Ray cluster of its
group's leader, whose address the LeaderWorkerSet controller sets as LWS_LEADER_ADDRESS.
*/}}
{{- define "tokenyard.rayCommand" -}}
{{- $engine := .engine -}}
{{- $port := $engine.multiNode.rayPort -}}
{{- if eq .role "leader" -}}
{{- $gpus := mul (int $engine.multiNode.nodes) (int $engine.gpu.count) -}}
ray start --head --port={{ $port }} --include-dashboard=false --disable-usage-stats
until python -c 'import sys, ray; ray.init(address="auto", logging_level="ERROR"); sys.exit(ray.cluster_resources().get("GPU", 0) < {{ $gpus }})'; do echo "waiting for the group's {{ $gpus }} GPUs to join"; sleep 5; done
exec tokenyard serve --config {{ include "tokenyard.configPath" .root }}
{{- else -}}
exec ray start --address="${LWS_LEADER_ADDRESS}:{{ $port }}" --block --disable-usage-stats
{{- end -}}
{{- end -}}
