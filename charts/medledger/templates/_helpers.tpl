{{/*
Names, labels, images, secrets and the pod pieces every medledger component shares.
*/}}

{{- define "medledger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "medledger.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Deployments; the ledger is a StatefulSet of its own. */}}
{{- define "medledger.statelessComponents" -}}
identity consent records audit
{{- end -}}

{{/* Components that scale horizontally (their state lives in PostgreSQL or is derived from blocks). */}}
{{- define "medledger.scalableComponents" -}}
identity consent records
{{- end -}}

{{- define "medledger.componentName" -}}
{{- printf "%s-%s" (include "medledger.fullname" .ctx | trunc 52 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "medledger.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "medledger.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medledger
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "medledger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medledger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component: call with (dict "ctx" $ "component" "identity"). */}}
{{- define "medledger.componentLabels" -}}
{{ include "medledger.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "medledger.componentSelectorLabels" -}}
{{ include "medledger.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "medledger.annotations" -}}
{{- with .Values.commonAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "medledger.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- $repository := .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s/%s@%s" $registry $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $registry $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "medledger.imagePullSecrets" -}}
{{- $secrets := concat .Values.global.imagePullSecrets .Values.image.pullSecrets | uniq -}}
{{- if $secrets }}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "medledger.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "medledger.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "medledger.configMapName" -}}
{{- printf "%s-config" (include "medledger.fullname" .) -}}
{{- end -}}

{{- define "medledger.genesisConfigMapName" -}}
{{- default (printf "%s-genesis" (include "medledger.fullname" .)) .Values.ledger.genesis.existingConfigMap -}}
{{- end -}}

{{- define "medledger.kekSecretName" -}}
{{- default (printf "%s-kek" (include "medledger.fullname" .)) .Values.records.kek.existingSecret -}}
{{- end -}}

{{/* Secret of a key file: its existingSecret, or the one the chart makes from its [secret] value. Call with (dict "ctx" $ "keyFile" values "suffix" "identity-key"). */}}
{{- define "medledger.keySecretName" -}}
{{- default (printf "%s-%s" (include "medledger.fullname" .ctx) .suffix) .keyFile.existingSecret -}}
{{- end -}}

{{/* Key files the chart makes Secrets for when their existingSecret is empty: values section, name suffix, component. */}}
{{- define "medledger.generatedKeyFiles" -}}
- {section: identity, field: serviceKey, suffix: identity-key, component: identity}
- {section: records, field: serviceKey, suffix: records-key, component: records}
- {section: records, field: studyKey, suffix: records-study-key, component: records}
- {section: audit, field: signingKey, suffix: audit-key, component: audit}
{{- end -}}

{{- define "medledger.objectStoreSecretName" -}}
{{- default (printf "%s-object-store" (include "medledger.fullname" .)) .Values.objectStore.existingSecret -}}
{{- end -}}

{{- define "medledger.postgresqlSecretName" -}}
{{- default (printf "%s-postgresql" (include "medledger.fullname" .)) .Values.postgresql.existingSecret -}}
{{- end -}}

{{- define "medledger.tlsSecretName" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "medledger.fullname" .) -}}
{{- else -}}
{{- .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* gRPC target of a component inside the cluster, as the TLS certificate names it. */}}
{{- define "medledger.grpcTarget" -}}
{{- printf "%s.%s.svc:%d" (include "medledger.componentName" .) .ctx.Release.Namespace (int (index .ctx.Values .component).service.port) -}}
{{- end -}}

{{/*
Settings the chart cannot work without, checked before anything renders so the
operator reads which value is missing instead of a pod that never starts.
*/}}
{{- define "medledger.validateValues" -}}
{{- if not .Values.orgId -}}
{{- fail "orgId is required: set it to this organisation's id in the consortium genesis" -}}
{{- end -}}
{{- if not .Values.ledger.validatorKey.existingSecret -}}
{{- fail "ledger.validatorKey.existingSecret is required: create a Secret holding this organisation's validator key (see docs/deploying.md)" -}}
{{- end -}}
{{- if and (not .Values.ledger.genesis.existingConfigMap) (not .Values.ledger.genesis.json) -}}
{{- fail "the consortium genesis is required: set ledger.genesis.existingConfigMap or ledger.genesis.json" -}}
{{- end -}}
{{- if not .Values.chainId -}}
{{- fail "chainId is required: set it to the chain id of the consortium genesis" -}}
{{- end -}}
{{- if .Values.ledger.genesis.json -}}
{{- $genesis := fromJson .Values.ledger.genesis.json -}}
{{- if and (hasKey $genesis "chain_id") (ne (toString $genesis.chain_id) .Values.chainId) -}}
{{- fail (printf "chainId %q differs from the chain_id %q of ledger.genesis.json" .Values.chainId (toString $genesis.chain_id)) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.records.kek.existingSecret) (not .Values.records.kek.value) -}}
{{- fail "the records key-encryption key is required: set records.kek.existingSecret (or records.kek.value for a throwaway cluster)" -}}
{{- end -}}
{{- if and (not .Values.records.kek.existingSecret) .Values.records.kek.previousKeys -}}
{{- fail "records.kek.previousKeys needs records.kek.existingSecret: rotation keeps every KEK in a Secret you manage" -}}
{{- end -}}
{{- range $entry := include "medledger.generatedKeyFiles" . | fromYamlArray -}}
{{- $keyFile := index (index $.Values $entry.section) $entry.field -}}
{{- if and (not $keyFile.existingSecret) (not $keyFile.value) -}}
{{- fail (printf "%s.%s.existingSecret is required: the chart never generates a key inside a pod (see docs/deploying.md)" $entry.section $entry.field) -}}
{{- end -}}
{{- if and (not $keyFile.existingSecret) ($keyFile.passphraseKey | default "") -}}
{{- fail (printf "%s.%s.passphraseKey needs %s.%s.existingSecret" $entry.section $entry.field $entry.section $entry.field) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.consent.custodian.passphraseKey (not .Values.consent.custodian.existingSecret) -}}
{{- fail "consent.custodian.passphraseKey needs consent.custodian.existingSecret" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled (not .Values.postgresql.existingSecret) (not .Values.postgresql.url) -}}
{{- fail "postgresql.enabled needs postgresql.existingSecret (or postgresql.url)" -}}
{{- end -}}
{{- if and .Values.objectStore.endpoint (not .Values.objectStore.existingSecret) (or (not .Values.objectStore.accessKey) (not .Values.objectStore.secretKey)) -}}
{{- fail "objectStore.endpoint needs objectStore.existingSecret (or objectStore.accessKey and objectStore.secretKey)" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.certManager.enabled) (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled needs tls.existingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.enabled) -}}
{{- fail "tls.certManager.enabled needs tls.enabled" -}}
{{- end -}}
{{- if and (or (gt (int .Values.records.replicaCount) 1) .Values.records.autoscaling.enabled) (or (not .Values.postgresql.enabled) (not .Values.objectStore.endpoint) .Values.records.persistence.enabled) -}}
{{- fail "more than one records replica needs postgresql.enabled, objectStore.endpoint and records.persistence.enabled=false (their state must be shared)" -}}
{{- end -}}
{{- if gt (int .Values.audit.replicaCount) 1 -}}
{{- fail "audit.replicaCount must be 1: the Merkle log has a single writer" -}}
{{- end -}}
{{- end -}}

{{/* Pod-level fields shared by every workload: call with (dict "ctx" $ "component" name "values" componentValues). */}}
{{- define "medledger.podSpecCommon" -}}
serviceAccountName: {{ include "medledger.serviceAccountName" .ctx }}
automountServiceAccountToken: {{ .ctx.Values.serviceAccount.automountServiceAccountToken }}
enableServiceLinks: false
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
{{- include "medledger.imagePullSecrets" .ctx }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Files a component reads from Secrets (and the genesis ConfigMap), one volume each, as a
list of {volume, secret | configMap, items, dir, env, file, passphraseKey}; volumes, mounts
and environment are all derived from it so a path can never disagree with its mount.
Call with (dict "ctx" $ "component" name).
*/}}
{{- define "medledger.mountedFiles" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $files := list -}}
{{- if $v.nats.credentials.existingSecret -}}
{{- $files = append $files (dict "volume" "nats-credentials" "secret" $v.nats.credentials.existingSecret "items" (list (dict "key" $v.nats.credentials.key "path" "nats.creds")) "dir" "/etc/medledger/nats") -}}
{{- end -}}
{{- if $v.nats.tls.caExistingSecret -}}
{{- $files = append $files (dict "volume" "nats-ca" "secret" $v.nats.tls.caExistingSecret "items" (list (dict "key" $v.nats.tls.caKey "path" "ca.crt")) "dir" "/etc/medledger/nats-ca") -}}
{{- end -}}
{{- if and $v.tls.enabled (ne .component "bootstrap") -}}
{{- $files = append $files (dict "volume" "tls" "secret" (include "medledger.tlsSecretName" $ctx) "dir" "/etc/medledger/tls") -}}
{{- end -}}
{{- if eq .component "ledger" -}}
{{- $files = append $files (dict "volume" "validator-key" "secret" $v.ledger.validatorKey.existingSecret "items" (list (dict "key" $v.ledger.validatorKey.key "path" "validator.key")) "dir" "/etc/medledger/validator" "env" "MEDLEDGER_VALIDATOR_KEY_FILE" "file" "validator.key" "passphraseKey" $v.ledger.validatorKey.passphraseKey "passphraseEnv" "MEDLEDGER_VALIDATOR_KEY_PASSPHRASE") -}}
{{- $files = append $files (dict "volume" "genesis" "configMap" (include "medledger.genesisConfigMapName" $ctx) "items" (list (dict "key" $v.ledger.genesis.key "path" "genesis.json")) "dir" "/etc/medledger/genesis" "env" "MEDLEDGER_GENESIS_FILE" "file" "genesis.json") -}}
{{- end -}}
{{- if eq .component "identity" -}}
{{- $key := $v.identity.serviceKey -}}
{{- $files = append $files (dict "volume" "service-key" "secret" (include "medledger.keySecretName" (dict "ctx" $ctx "keyFile" $key "suffix" "identity-key")) "items" (list (dict "key" $key.key "path" "service.key")) "dir" "/etc/medledger/service-key" "env" "MEDLEDGER_SERVICE_KEY_FILE" "file" "service.key" "passphraseKey" $key.passphraseKey "passphraseEnv" "MEDLEDGER_SERVICE_KEY_PASSPHRASE") -}}
{{- if $v.identity.bootstrapKey.existingSecret -}}
{{- $files = append $files (dict "volume" "bootstrap-key" "secret" $v.identity.bootstrapKey.existingSecret "items" (list (dict "key" $v.identity.bootstrapKey.key "path" "validator.key")) "dir" "/etc/medledger/bootstrap-key" "env" "MEDLEDGER_BOOTSTRAP_KEY_FILE" "file" "validator.key") -}}
{{- end -}}
{{- end -}}
{{- if and (eq .component "consent") $v.consent.custodian.existingSecret -}}
{{- $key := $v.consent.custodian -}}
{{- $files = append $files (dict "volume" "custodian-key" "secret" $key.existingSecret "items" (list (dict "key" $key.key "path" "custodian.key")) "dir" "/etc/medledger/custodian-key" "env" "MEDLEDGER_CUSTODIAN_KEY_FILE" "file" "custodian.key" "passphraseKey" $key.passphraseKey "passphraseEnv" "MEDLEDGER_CUSTODIAN_KEY_PASSPHRASE") -}}
{{- end -}}
{{- if eq .component "records" -}}
{{- $kekItems := list -}}
{{- range $name := prepend $v.records.kek.previousKeys $v.records.kek.key -}}
{{- $kekItems = append $kekItems (dict "key" $name "path" $name) -}}
{{- end -}}
{{- $files = append $files (dict "volume" "kek" "secret" (include "medledger.kekSecretName" $ctx) "items" $kekItems "dir" "/etc/medledger/kek" "env" "MEDLEDGER_KEK_DIR") -}}
{{- $key := $v.records.serviceKey -}}
{{- $files = append $files (dict "volume" "service-key" "secret" (include "medledger.keySecretName" (dict "ctx" $ctx "keyFile" $key "suffix" "records-key")) "items" (list (dict "key" $key.key "path" "service.key")) "dir" "/etc/medledger/service-key" "env" "MEDLEDGER_SERVICE_KEY_FILE" "file" "service.key" "passphraseKey" $key.passphraseKey "passphraseEnv" "MEDLEDGER_SERVICE_KEY_PASSPHRASE") -}}
{{- $study := $v.records.studyKey -}}
{{- $files = append $files (dict "volume" "study-key" "secret" (include "medledger.keySecretName" (dict "ctx" $ctx "keyFile" $study "suffix" "records-study-key")) "items" (list (dict "key" $study.key "path" "study.key")) "dir" "/etc/medledger/study-key" "env" "MEDLEDGER_STUDY_KEY_FILE" "file" "study.key") -}}
{{- if and $v.objectStore.endpoint $v.objectStore.tls.caExistingSecret -}}
{{- $files = append $files (dict "volume" "object-store-ca" "secret" $v.objectStore.tls.caExistingSecret "items" (list (dict "key" $v.objectStore.tls.caKey "path" "ca.crt")) "dir" "/etc/medledger/object-store-ca" "env" "MEDLEDGER_S3_CA_FILE" "file" "ca.crt") -}}
{{- end -}}
{{- end -}}
{{- if eq .component "audit" -}}
{{- $key := $v.audit.signingKey -}}
{{- $files = append $files (dict "volume" "signing-key" "secret" (include "medledger.keySecretName" (dict "ctx" $ctx "keyFile" $key "suffix" "audit-key")) "items" (list (dict "key" $key.key "path" "signing.key")) "dir" "/etc/medledger/signing-key" "env" "MEDLEDGER_SIGNING_KEY_FILE" "file" "signing.key" "passphraseKey" $key.passphraseKey "passphraseEnv" "MEDLEDGER_SIGNING_KEY_PASSPHRASE") -}}
{{- end -}}
{{- toYaml $files -}}
{{- end -}}

{{/* Volumes every component mounts besides /data: call with (dict "ctx" $ "component" name). */}}
{{- define "medledger.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- range $file := include "medledger.mountedFiles" . | fromYamlArray }}
- name: {{ $file.volume }}
  {{- if $file.configMap }}
  configMap:
    name: {{ $file.configMap }}
  {{- else }}
  secret:
    secretName: {{ $file.secret }}
    defaultMode: 0440
  {{- end }}
  {{- with $file.items }}
    items:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "medledger.volumeMounts" -}}
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- range $file := include "medledger.mountedFiles" . | fromYamlArray }}
- name: {{ $file.volume }}
  mountPath: {{ $file.dir }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Environment of one component: shared settings come from the ConfigMap, secrets by reference only. */}}
{{- define "medledger.env" -}}
{{- $ctx := .ctx -}}
{{- $env := include "medledger.envList" . | trim -}}
envFrom:
  - configMapRef:
      name: {{ include "medledger.configMapName" $ctx }}
{{- if $env }}
env:
  {{- $env | trim | nindent 2 }}
{{- end }}
{{- end -}}

{{/* One setting with a literal value. */}}
{{- define "medledger.envValue" -}}
- name: {{ .name }}
  value: {{ .value | toString | quote }}
{{- end -}}

{{/* One setting read from a Secret, never inlined. */}}
{{- define "medledger.envSecret" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/*
The settings of one component beyond the shared ConfigMap: exactly the fields of that
service's Settings class (tests/charts/test_chart_settings.py checks the names against the
code). Call with (dict "ctx" $ "component" name).
*/}}
{{- define "medledger.envList" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $component := .component -}}
{{- if ne $component "bootstrap" }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_GRPC_PORT" "value" (int64 (index $v $component).service.port)) }}
{{- if $v.tls.enabled }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_TLS_CERT_FILE" "value" "/etc/medledger/tls/tls.crt") }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_TLS_KEY_FILE" "value" "/etc/medledger/tls/tls.key") }}
{{- if $v.tls.clientAuth }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_TLS_CLIENT_CA_FILE" "value" "/etc/medledger/tls/ca.crt") }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.postgresql.enabled (ne $component "ledger") }}
{{ include "medledger.envSecret" (dict "name" "MEDLEDGER_DATABASE_URL" "secret" (include "medledger.postgresqlSecretName" $ctx) "key" $v.postgresql.existingSecretKey) }}
{{- end }}
{{- range $file := include "medledger.mountedFiles" . | fromYamlArray }}
{{- if $file.env }}
{{ include "medledger.envValue" (dict "name" $file.env "value" (trimSuffix "/" (printf "%s/%s" $file.dir ($file.file | default "")))) }}
{{- end }}
{{- if $file.passphraseKey }}
{{ include "medledger.envSecret" (dict "name" $file.passphraseEnv "secret" $file.secret "key" $file.passphraseKey) }}
{{- end }}
{{- end }}
{{- if has $component (list "identity" "consent" "records" "audit") }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_CHAIN_ID" "value" $v.chainId) }}
{{- end }}
{{- if has $component (list "identity" "records" "ledger") }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_TOKEN_AUDIENCE" "value" $v.config.tokenAudience) }}
{{- end }}
{{- if eq $component "ledger" }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_MEMPOOL_CAPACITY" "value" (int64 $v.ledger.mempoolCapacity)) }}
{{- end }}
{{- if eq $component "identity" }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_TOKEN_LIFETIME_SECONDS" "value" (int64 $v.identity.tokens.lifetimeSeconds)) }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_MAX_TOKEN_LIFETIME_SECONDS" "value" (int64 $v.identity.tokens.maxLifetimeSeconds)) }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_CHALLENGE_TTL_SECONDS" "value" (int64 $v.identity.tokens.challengeTtlSeconds)) }}
{{- end }}
{{- if eq $component "consent" }}
{{- if $v.consent.custodian.existingSecret }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_CUSTODIAN_PRINCIPAL" "value" (printf "organisations/%s/principals/%s" $v.orgId $v.consent.custodian.principalId)) }}
{{- end }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_BREAK_GLASS_DEFAULT_SECONDS" "value" (int64 $v.consent.breakGlass.defaultSeconds)) }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_BREAK_GLASS_MAX_SECONDS" "value" (int64 $v.consent.breakGlass.maxSeconds)) }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_BREAK_GLASS_OVERRIDES_CONSENT" "value" $v.consent.breakGlass.overridesConsent) }}
{{- end }}
{{- if eq $component "records" }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_CURRENT_KEK_ID" "value" $v.records.kek.key) }}
{{- if $v.objectStore.endpoint }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_STORAGE_BACKEND" "value" "s3") }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_S3_ENDPOINT" "value" $v.objectStore.endpoint) }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_S3_BUCKET" "value" $v.objectStore.bucket) }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_S3_REGION" "value" $v.objectStore.region) }}
{{- with $v.objectStore.prefix }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_S3_PREFIX" "value" .) }}
{{- end }}
{{ include "medledger.envSecret" (dict "name" "MEDLEDGER_S3_ACCESS_KEY" "secret" (include "medledger.objectStoreSecretName" $ctx) "key" $v.objectStore.accessKeyKey) }}
{{ include "medledger.envSecret" (dict "name" "MEDLEDGER_S3_SECRET_KEY" "secret" (include "medledger.objectStoreSecretName" $ctx) "key" $v.objectStore.secretKeyKey) }}
{{- else }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_STORAGE_BACKEND" "value" "dir") }}
{{- end }}
{{- end }}
{{- if eq $component "audit" }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_CHECKPOINT_INTERVAL_SECONDS" "value" $v.audit.checkpointIntervalSeconds) }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_STREAM_REPLICAS" "value" (int64 $v.nats.streamReplicas)) }}
{{- end }}
{{- if eq $component "bootstrap" }}
{{ include "medledger.envValue" (dict "name" "MEDLEDGER_AUDIT_STREAM_REPLICAS" "value" (int64 $v.nats.streamReplicas)) }}
{{- else }}
{{- with (index $v $component).extraEnvVars }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Native gRPC probes: the kubelet speaks grpc.health.v1 itself, so the image needs no shell. */}}
{{- define "medledger.probes" -}}
{{- $port := int (index .ctx.Values .component).service.port -}}
{{- $probes := .ctx.Values.probes -}}
{{- if $probes.startup.enabled }}
startupProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: {{ $probes.startup.periodSeconds }}
  failureThreshold: {{ $probes.startup.failureThreshold }}
  timeoutSeconds: {{ $probes.startup.timeoutSeconds }}
{{- end }}
{{- if $probes.liveness.enabled }}
livenessProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: {{ $probes.liveness.periodSeconds }}
  failureThreshold: {{ $probes.liveness.failureThreshold }}
  timeoutSeconds: {{ $probes.liveness.timeoutSeconds }}
{{- end }}
{{- if $probes.readiness.enabled }}
readinessProbe:
  grpc:
    port: {{ $port }}
  periodSeconds: {{ $probes.readiness.periodSeconds }}
  failureThreshold: {{ $probes.readiness.failureThreshold }}
  timeoutSeconds: {{ $probes.readiness.timeoutSeconds }}
{{- end }}
{{- end -}}

{{/* The serving container of a component: call with (dict "ctx" $ "component" name). */}}
{{- define "medledger.serveContainer" -}}
{{- $ctx := .ctx -}}
{{- $values := index $ctx.Values .component -}}
- name: {{ .component }}
  image: {{ include "medledger.image" $ctx }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  args: ["serve", {{ .component | quote }}]
  ports:
    - name: grpc
      containerPort: {{ $values.service.port }}
      protocol: TCP
    - name: metrics
      containerPort: {{ $ctx.Values.config.metricsPort }}
      protocol: TCP
  {{- include "medledger.env" . | trim | nindent 2 }}
  {{- include "medledger.probes" . | trim | nindent 2 }}
  resources:
    {{- toYaml $values.resources | nindent 4 }}
  securityContext:
    {{- toYaml $ctx.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "medledger.volumeMounts" . | nindent 4 }}
{{- end -}}

{{/* Pod annotations that roll the pods when their settings or generated secrets change. */}}
{{- define "medledger.checksumAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
checksum/secrets: {{ include (print .ctx.Template.BasePath "/secrets.yaml") .ctx | sha256sum }}
{{- if eq .component "ledger" }}
checksum/genesis: {{ include (print .ctx.Template.BasePath "/genesis-configmap.yaml") .ctx | sha256sum }}
{{- end }}
{{- end -}}

{{/* One egress rule to (dict "to" peers "ports" list); no rule at all when the peer list is empty, since an empty `to` would mean everywhere. */}}
{{- define "medledger.egressRule" -}}
{{- if .to }}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
    {{- if .udp }}
    {{- range .ports }}
    - port: {{ . }}
      protocol: UDP
    {{- end }}
    {{- end }}
{{- end }}
{{- end -}}

{{/* Egress every component needs: DNS, NATS and, when configured, the OTLP collector. */}}
{{- define "medledger.commonEgress" -}}
{{- $egress := .Values.networkPolicy.egress -}}
{{- if $egress.dns.enabled }}
{{- include "medledger.egressRule" (dict "to" $egress.dns.to "ports" (list 53) "udp" true) }}
{{- end }}
{{- include "medledger.egressRule" $egress.nats }}
{{- if .Values.config.otlpEndpoint }}
{{- include "medledger.egressRule" $egress.otlp }}
{{- end }}
{{- end -}}

{{/* component=host:port pairs the helm test checks. */}}
{{- define "medledger.testTargets" -}}
{{- $pairs := list -}}
{{- range $component := append (splitList " " (include "medledger.statelessComponents" $)) "ledger" -}}
{{- $pairs = append $pairs (printf "%s=%s" $component (include "medledger.grpcTarget" (dict "ctx" $ "component" $component))) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
