{{- define "envoy-keypool.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "envoy-keypool.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "envoy-keypool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "envoy-keypool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "envoy-keypool.labels" -}}
{{ include "envoy-keypool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Where the projected Secret volume is mounted; each referenced key is the file
SECRET/KEY below it. */}}
{{- define "envoy-keypool.secretDir" -}}/var/run/secrets/envoy-keypool{{- end -}}

{{- define "envoy-keypool.secretFile" -}}
{{- printf "file:%s/%s/%s" (include "envoy-keypool.secretDir" .root) (required "a secretRef needs a name" .ref.name) (required "a secretRef needs a key" .ref.key) -}}
{{- end -}}

{{/* Every Secret key the configuration reads, as "name/key" => ref. */}}
{{- define "envoy-keypool.secretRefs" -}}
{{- $refs := dict -}}
{{- with .Values.adminToken.secretRef }}{{ if .name }}{{ $_ := set $refs (printf "%s/%s" .name .key) . }}{{ end }}{{ end -}}
{{- with .Values.redis.passwordSecretRef }}{{ if .name }}{{ $_ := set $refs (printf "%s/%s" .name .key) . }}{{ end }}{{ end -}}
{{- range .Values.pools -}}
{{- range .keys -}}
{{- $ref := required (printf "key %v needs a secretRef" .id) .secretRef -}}
{{- $_ := set $refs (printf "%s/%s" (required "a secretRef needs a name" $ref.name) (required "a secretRef needs a key" $ref.key)) $ref -}}
{{- end -}}
{{- end -}}
{{- toYaml $refs -}}
{{- end -}}

{{- define "envoy-keypool.redisURL" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis.%s.svc.cluster.local:6379" (include "envoy-keypool.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{/* The envoy-keypool configuration file. */}}
{{- define "envoy-keypool.config" -}}
{{- $root := . -}}
{{- $cfg := dict "listen" (dict "grpc" "0.0.0.0:9001" "admin" "0.0.0.0:9002") "log" .Values.log -}}
{{- with .Values.adminToken.secretRef -}}
{{- if .name }}{{ $_ := set $cfg "admin" (dict "token" (include "envoy-keypool.secretFile" (dict "root" $root "ref" .))) }}{{ end -}}
{{- end -}}
{{- $envoy := deepCopy .Values.envoy -}}
{{- if not (hasKey $envoy "keypool_addresses") -}}
{{- $_ := set $envoy "keypool_addresses" (list (printf "%s.%s.svc.cluster.local:9001" (include "envoy-keypool.fullname" .) .Release.Namespace)) -}}
{{- end -}}
{{- $_ := set $cfg "envoy" $envoy -}}
{{- $url := include "envoy-keypool.redisURL" . -}}
{{- if $url -}}
{{- $redis := dict "url" $url -}}
{{- if .Values.redis.enabled }}{{ $_ := required "redis.passwordSecretRef is required when redis.enabled" .Values.redis.passwordSecretRef.name }}{{ end -}}
{{- with .Values.redis.passwordSecretRef -}}
{{- if .name }}{{ $_ := set $redis "password" (include "envoy-keypool.secretFile" (dict "root" $root "ref" .)) }}{{ end -}}
{{- end -}}
{{- $_ := set $cfg "state" (dict "redis" $redis) -}}
{{- end -}}
{{- if not .Values.pools }}{{ fail "pools: give at least one pool (see ci/values-example.yaml)" }}{{ end -}}
{{- $pools := list -}}
{{- range .Values.pools -}}
{{- $pool := omit . "keys" -}}
{{- $keys := list -}}
{{- range .keys -}}
{{- $keys = append $keys (dict "id" .id "secret" (include "envoy-keypool.secretFile" (dict "root" $root "ref" .secretRef))) -}}
{{- end -}}
{{- $_ := set $pool "keys" $keys -}}
{{- $pools = append $pools $pool -}}
{{- end -}}
{{- $_ := set $cfg "pools" $pools -}}
{{- toYaml $cfg -}}
{{- end -}}
