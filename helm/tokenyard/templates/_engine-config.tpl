{{/*
The config file of one engine, given (list root engine), as YAML: everything the engine process reads
from the chart. Its pods' checksum hashes this and nothing else, so that a value only the router reads
(aliases, the route's policy or hold, budgets, scaling) never restarts an engine and reloads its model.
*/}}
{{- define "tokenyard.engineConfig" -}}
{{- $root := index . 0 -}}
{{- $engine := index . 1 -}}
{{- $model := dict "name" $engine.name "model" $engine.model "kind" $engine.kind "dtype" $engine.dtype "engine_args" $engine.engineArgs -}}
{{- with $engine.maxModelLen }}{{ $_ := set $model "max_model_len" . }}{{ end -}}
{{- with $engine.chatTemplate }}{{ $_ := set $model "chat_template" . }}{{ end -}}
{{- with $engine.toolParser }}{{ $_ := set $model "tool_parser" . }}{{ end -}}
{{- with $engine.loraAdapters }}{{ $_ := set $model "lora_adapters" . }}{{ end -}}
{{- if or $engine.enableLora $engine.loraRuntimeLoad }}{{ $_ := set $model "enable_lora" true }}{{ end -}}
{{- with $engine.maxLoras }}{{ $_ := set $model "max_loras" . }}{{ end -}}
{{- with $engine.maxLoraRank }}{{ $_ := set $model "max_lora_rank" . }}{{ end -}}
{{- with $engine.media }}{{ $_ := set $model "media" . }}{{ end -}}
{{- if $engine.kvEvents.enabled -}}
{{- /* Bound on every address of the pod: the router reaches it on the pod IP that discovery gives. */ -}}
{{- $_ := set $model "kv_events_endpoint" (printf "tcp://*:%d" (int $engine.kvEvents.port)) -}}
{{- with int $engine.kvEvents.replayPort }}{{ $_ := set $model "kv_events_replay_endpoint" (printf "tcp://*:%d" .) }}{{ end -}}
{{- end -}}
{{- $gpus := int $engine.gpu.count -}}
{{- $nodes := int $engine.multiNode.nodes -}}
{{- if and (gt $gpus 1) (not (hasKey $engine.engineArgs "tensor_parallel_size")) -}}
{{- $_ := set $model "engine_args" (merge (dict "tensor_parallel_size" $gpus) $engine.engineArgs) -}}
{{- end -}}
{{- if gt $nodes 1 -}}
{{- /* Across nodes: tensor parallel inside each node, pipeline parallel over the nodes, on Ray. */ -}}
{{- $_ := set $model "engine_args" (merge (deepCopy $model.engine_args) (dict "tensor_parallel_size" $gpus "pipeline_parallel_size" $nodes "distributed_executor_backend" "ray")) -}}
{{- end -}}
{{- $config := dict
      "host" "0.0.0.0"
      "port" (include "tokenyard.containerPort" $root | int)
      "log_level" $root.Values.logLevel
      "drain_deadline_s" $engine.drainDeadline
      "models" (list $model) -}}
{{- if $root.Values.internalKey.enabled -}}
{{- $_ := set $config "auth" (dict "api_keys_file" (include "tokenyard.internalKeyPath" $root)) -}}
{{- end -}}
{{- if $engine.loraRuntimeLoad }}{{ $_ := set $config "allow_runtime_lora_updating" true }}{{ $_ := set $config "lora_dir" (default "/" $engine.loraDir) }}{{ end -}}
{{- if $root.Values.tracing.enabled }}{{ $_ := set $config "tracing" (dict "enabled" true) }}{{ end -}}
{{- toYaml (fromYaml (include "tokenyard.merge" (list $config (default (dict) $engine.extraConfig)))) -}}
{{- end -}}
