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
{{- if and (not .Values.records.kek.existingSecret) (not .Values.records.kek.value) -}}
{{- fail "the records key-encryption key is required: set records.kek.existingSecret (or records.kek.value for a throwaway cluster)" -}}
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

{{/* Volumes every component mounts besides /data: call with (dict "ctx" $ "component" name). */}}
{{- define "medledger.volumes" -}}
{{- $ctx := .ctx -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if $ctx.Values.nats.credentials.existingSecret }}
- name: nats-credentials
  secret:
    secretName: {{ $ctx.Values.nats.credentials.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $ctx.Values.nats.credentials.key }}
        path: nats.creds
{{- end }}
{{- if $ctx.Values.nats.tls.caExistingSecret }}
- name: nats-ca
  secret:
    secretName: {{ $ctx.Values.nats.tls.caExistingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $ctx.Values.nats.tls.caKey }}
        path: ca.crt
{{- end }}
{{- if and $ctx.Values.tls.enabled (ne .component "bootstrap") }}
- name: tls
  secret:
    secretName: {{ include "medledger.tlsSecretName" $ctx }}
    defaultMode: 0440
{{- end }}
{{- if eq .component "records" }}
- name: kek
  secret:
    secretName: {{ include "medledger.kekSecretName" $ctx }}
    defaultMode: 0440
    items:
      - key: {{ $ctx.Values.records.kek.key }}
        path: kek
{{- end }}
{{- if eq .component "ledger" }}
- name: validator-key
  secret:
    secretName: {{ $ctx.Values.ledger.validatorKey.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $ctx.Values.ledger.validatorKey.key }}
        path: validator.key
- name: genesis
  configMap:
    name: {{ include "medledger.genesisConfigMapName" $ctx }}
    items:
      - key: {{ $ctx.Values.ledger.genesis.key }}
        path: genesis.json
{{- end }}
{{- end -}}

{{- define "medledger.volumeMounts" -}}
{{- $ctx := .ctx -}}
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- if $ctx.Values.nats.credentials.existingSecret }}
- name: nats-credentials
  mountPath: /etc/medledger/nats
  readOnly: true
{{- end }}
{{- if $ctx.Values.nats.tls.caExistingSecret }}
- name: nats-ca
  mountPath: /etc/medledger/nats-ca
  readOnly: true
{{- end }}
{{- if and $ctx.Values.tls.enabled (ne .component "bootstrap") }}
- name: tls
  mountPath: /etc/medledger/tls
  readOnly: true
{{- end }}
{{- if eq .component "records" }}
- name: kek
  mountPath: /etc/medledger/kek
  readOnly: true
{{- end }}
{{- if eq .component "ledger" }}
- name: validator-key
  mountPath: /etc/medledger/validator
  readOnly: true
- name: genesis
  mountPath: /etc/medledger/genesis
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

{{- define "medledger.envList" -}}
{{- $ctx := .ctx -}}
{{- if ne .component "bootstrap" }}
- name: MEDLEDGER_GRPC_PORT
  value: {{ (index $ctx.Values .component).service.port | quote }}
{{- end }}
{{- if and $ctx.Values.postgresql.enabled (ne .component "ledger") }}
- name: MEDLEDGER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "medledger.postgresqlSecretName" $ctx }}
      key: {{ $ctx.Values.postgresql.existingSecretKey }}
{{- end }}
{{- if eq .component "records" }}
- name: MEDLEDGER_KEK_FILE
  value: /etc/medledger/kek/kek
{{- if $ctx.Values.objectStore.endpoint }}
- name: MEDLEDGER_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "medledger.objectStoreSecretName" $ctx }}
      key: {{ $ctx.Values.objectStore.accessKeyKey }}
- name: MEDLEDGER_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "medledger.objectStoreSecretName" $ctx }}
      key: {{ $ctx.Values.objectStore.secretKeyKey }}
{{- end }}
{{- end }}
{{- if eq .component "ledger" }}
- name: MEDLEDGER_VALIDATOR_KEY_FILE
  value: /etc/medledger/validator/validator.key
- name: MEDLEDGER_GENESIS_FILE
  value: /etc/medledger/genesis/genesis.json
{{- end }}
{{- if ne .component "bootstrap" }}
{{- with (index $ctx.Values .component).extraEnvVars }}
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
