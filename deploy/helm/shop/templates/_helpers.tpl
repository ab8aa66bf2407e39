{{/*
The facts about each service that are not settings: its ports, what it owns, whom it calls.
They mirror the services' code (ServiceSpec in each lib.rs) and deploy/local/stack.sh; the
deploy-check crate's drift test compares the rendered chart with what each service reads.

  store      postgres | mongodb | redis: the store it owns (its database/role for the dev infra)
  callsGrpc  services whose gRPC port it calls (the saga; notification's GetUser)
  callsHttp  services whose HTTP port it calls (the gateway's routes)
  verifies   it verifies user-service's tokens (fetches the JWKS over HTTP)
  tokens     it obtains service tokens from user-service (SERVICE_TOKEN_URL/SERVICE_SECRET)
*/}}
{{/* Used as a dict: $t := include "shop.services" . | fromYaml */}}
{{- define "shop.services" -}}
gateway:
  http: 8080
  ops: 9080
  grpc: 50050
  store: redis
  verifies: true
  callsHttp: [user-service, catalog-service, inventory-service, order-service, payment-service, notification-service]
user-service:
  http: 8081
  ops: 9081
  grpc: 50051
  store: postgres
  database: users
  role: user_service
catalog-service:
  http: 8082
  ops: 9082
  grpc: 50052
  store: mongodb
  database: catalog
  role: catalog_service
  verifies: true
inventory-service:
  http: 8083
  ops: 9083
  grpc: 50053
  store: postgres
  database: inventory
  role: inventory_service
  verifies: true
order-service:
  http: 8084
  ops: 9084
  grpc: 50054
  store: postgres
  database: orders
  role: order_service
  verifies: true
  tokens: true
  callsGrpc: [catalog-service, inventory-service, payment-service]
payment-service:
  http: 8085
  ops: 9085
  grpc: 50055
  store: postgres
  database: payments
  role: payment_service
  verifies: true
notification-service:
  http: 8086
  ops: 9086
  grpc: 50056
  store: mongodb
  database: notification
  role: notification_service
  verifies: true
  tokens: true
  smtp: true
  callsGrpc: [user-service]
{{- end -}}

{{/* Development credentials of the in-chart RabbitMQ: user = password = the role below, hashed
as RabbitMQ stores them (base64(salt ++ sha256(salt ++ password)), the same hashes as
deploy/compose/rabbitmq/definitions.json). */}}
{{- define "shop.rabbitmqHashes" -}}
guest: MfvLoCYq0ZpvHeqcuUoy5wr2rjp00RE86jl+ytD3xQhewR1q
user_service: FFw5H/pFYliYXUH1oTo4aOdBV0lad5b7PgNiktB2jq9tYEOX
catalog_service: dlVOhAkrU3OcINr3iJjm2CtAR6gg9MOJmsiNmV0WqqLVAjNR
inventory_service: 7LL9w1Q04975QqfajZ70ZXHudt4y8lmNgfJtKs+KMvgYmD68
order_service: i3LOLgzTxy60qWRIkW2F3j3UwNFvYLoefnsLr/hLD8VsIMu9
payment_service: cdzurSgFoTMGgVQnCljawK1JNuYIhbjDmdIVc7kkm6wacl2I
notification_service: nTL4/nvaDEmTd6Lv0GpGVYvsHm6XWeUAz3N8jfphZX6Pmb9r
gateway: lPCCRmIkzoS8DQCwTsu469TXZ/XjjVWIdz7Je7zrn6wlvFtQ
{{- end -}}

{{- define "shop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The Kubernetes name of a component: "<release>-<component>" (e.g. shop-order-service). */}}
{{- define "shop.name" -}}
{{- printf "%s-%s" (include "shop.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shop.selectorLabels" -}}
app.kubernetes.io/name: shop
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shop.labels" -}}
{{ include "shop.selectorLabels" . }}
app.kubernetes.io/part-of: shop
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* A service's settings: `defaults` overlaid with services.<name>. */}}
{{- define "shop.settings" -}}
{{- $own := index .root.Values.services .component | default dict -}}
{{- mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $own) | toYaml -}}
{{- end -}}

{{- define "shop.image" -}}
{{- $settings := include "shop.settings" . | fromYaml -}}
{{- $image := $settings.image | default dict -}}
{{- $tag := $image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $repository := $image.repository | default (printf "%s/%s" .root.Values.image.repository .component) -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" .root.Values.image.registry $repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding a service's secret variables: its existingSecret, or the one the chart
generates for development. */}}
{{- define "shop.secretName" -}}
{{- $own := index .root.Values.services .component | default dict -}}
{{- $own.existingSecret | default (include "shop.name" .) -}}
{{- end -}}

{{/* http://<release>-<service>:<port> for a service of this release. */}}
{{- define "shop.url" -}}
{{- $t := include "shop.services" .root | fromYaml -}}
{{- printf "http://%s:%v" (include "shop.name" .) (index (index $t .component) .port) -}}
{{- end -}}

{{/* The gRPC URL of a service of this release: https:// when grpcTls is on (ADR 0017). */}}
{{- define "shop.grpcUrl" -}}
{{- $url := include "shop.url" (dict "root" .root "component" .component "port" "grpc") -}}
{{- if .root.Values.grpcTls.existingSecret -}}{{ replace "http://" "https://" $url }}{{- else -}}{{ $url }}{{- end -}}
{{- end -}}

{{/* The Secret with a service's gRPC certificate (tls.crt, tls.key, ca.crt): its own
grpcTlsSecret, else grpcTls.existingSecret; empty when gRPC is plaintext. */}}
{{- define "shop.grpcTlsSecret" -}}
{{- if .root.Values.grpcTls.existingSecret -}}
{{- $own := index .root.Values.services .component | default dict -}}
{{- $own.grpcTlsSecret | default .root.Values.grpcTls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Where the gRPC TLS Secret is mounted in every service container. */}}
{{- define "shop.grpcTlsDir" -}}/etc/shop/grpc-tls{{- end -}}

{{/* The secret variables of a service, in its Secret: name -> optional. Optional ones are
only needed in production (the service refuses development defaults there and says which). */}}
{{- define "shop.secretKeys" -}}
{{- $t := include "shop.services" .root | fromYaml -}}
{{- $s := index $t .component -}}
{{- if eq $s.store "postgres" }}
DATABASE_URL: false
{{- else if eq $s.store "mongodb" }}
MONGODB_URL: false
{{- else if eq $s.store "redis" }}
REDIS_URL: false
{{- end }}
AMQP_URL: false
{{- if $s.tokens }}
SERVICE_SECRET: false
{{- end }}
{{- if eq .component "user-service" }}
SERVICE_CLIENTS: false
ADMIN_PASSWORD: false
JWT_SIGNING_KEY: true
JWT_PREVIOUS_SIGNING_KEY: true
{{- end }}
{{- if eq .component "order-service" }}
ORDER_CARD_KEY: true
{{- end }}
{{- if $s.smtp }}
SMTP_USERNAME: true
SMTP_PASSWORD: true
{{- end }}
{{- end -}}

{{/* The pod security context every pod of the release runs with. */}}
{{- define "shop.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 65532 }}
runAsGroup: {{ .uid | default 65532 }}
fsGroup: {{ .uid | default 65532 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shop.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ if hasKey . "readOnly" }}{{ .readOnly }}{{ else }}true{{ end }}
capabilities:
  drop: [ALL]
{{- end -}}

{{/* A service's non-secret variables (its ConfigMap): what deploy/local/stack.sh gives it,
with in-cluster addresses, plus services.<name>.env. */}}
{{- define "shop.config" -}}
{{- $root := .root -}}
{{- $t := include "shop.services" $root | fromYaml -}}
{{- $s := index $t .component -}}
{{- $settings := include "shop.settings" . | fromYaml -}}
{{- $user := dict "root" $root "component" "user-service" "port" "http" -}}
{{- $env := dict
  "HTTP_ADDR" (printf "0.0.0.0:%v" $s.http)
  "GRPC_ADDR" (printf "0.0.0.0:%v" $s.grpc)
  "OPS_ADDR" (printf "0.0.0.0:%v" $s.ops)
  "LOG_FORMAT" "json"
  "RUST_LOG" $root.Values.logLevel
  "SHOP_ENV" $root.Values.mode
-}}
{{- with $root.Values.otel.endpoint }}{{ $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" . }}{{ end -}}
{{- if eq $s.store "mongodb" }}{{ $_ := set $env "MONGODB_DATABASE" $s.database }}{{ end -}}
{{- if $s.verifies -}}
{{- $_ := set $env "AUTH_JWKS_URL" ($root.Values.auth.jwksUrl | default (printf "%s/.well-known/jwks.json" (include "shop.url" $user))) -}}
{{- end -}}
{{- if $s.tokens -}}
{{- $_ := set $env "SERVICE_TOKEN_URL" ($root.Values.auth.serviceTokenUrl | default (printf "%s/internal/v1/service-token" (include "shop.url" $user))) -}}
{{- end -}}
{{- range $s.callsGrpc -}}
{{- $_ := set $env (printf "%s_GRPC_URL" (trimSuffix "-service" . | upper)) (include "shop.grpcUrl" (dict "root" $root "component" .)) -}}
{{- end -}}
{{- if include "shop.grpcTlsSecret" . -}}
{{- $dir := include "shop.grpcTlsDir" . -}}
{{- $_ := set $env "GRPC_TLS_CERT_FILE" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $env "GRPC_TLS_KEY_FILE" (printf "%s/tls.key" $dir) -}}
{{- if $s.callsGrpc }}{{ $_ := set $env "GRPC_TLS_CA_FILE" (printf "%s/ca.crt" $dir) }}{{ end -}}
{{- end -}}
{{- range $s.callsHttp -}}
{{- $_ := set $env (printf "%s_SERVICE_URL" (trimSuffix "-service" . | upper)) (include "shop.url" (dict "root" $root "component" . "port" "http")) -}}
{{- end -}}
{{- if $s.smtp -}}
{{- $_ := set $env "SMTP_HOST" ($root.Values.smtp.host | default (include "shop.name" (dict "root" $root "component" "mailpit"))) -}}
{{- $_ := set $env "SMTP_PORT" (toString $root.Values.smtp.port) -}}
{{- $_ := set $env "SMTP_TLS" ($root.Values.smtp.tls | default "none") -}}
{{- with $root.Values.smtp.from }}{{ $_ := set $env "SMTP_FROM" . }}{{ end -}}
{{- end -}}
{{- range $name, $value := $settings.env -}}
{{- $_ := set $env $name (toString $value) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* The standard port of each store the chart can run. */}}
{{- define "shop.storePorts" -}}
postgres: 5432
mongodb: 27017
redis: 6379
rabbitmq: 5672
mailpit: 1025
{{- end -}}

{{/* Whether the in-chart store .store runs ("true" or ""). */}}
{{- define "shop.inChart" -}}
{{- if (index .root.Values.infrastructure .store).enabled }}true{{ end -}}
{{- end -}}

{{/* "host:port" of store .store for the generated development Secrets: the in-chart one, or
infrastructure.<store>.external when it is switched off (its port defaulting to the store's
standard one); empty when neither is given. */}}
{{- define "shop.storeAddress" -}}
{{- $port := index (include "shop.storePorts" .root | fromYaml) .store -}}
{{- if include "shop.inChart" . -}}
{{- printf "%s:%v" (include "shop.name" (dict "root" .root "component" .store)) $port -}}
{{- else -}}
{{- with (index .root.Values.infrastructure .store).external -}}
{{- if contains ":" . }}{{ . }}{{ else }}{{ printf "%s:%v" . $port }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The stores (and broker, mail relay) a service uses: its own store, RabbitMQ, Mailpit for the
one that sends mail. */}}
{{- define "shop.storesOf" -}}
{{- $t := include "shop.services" .root | fromYaml -}}
{{- $s := index $t .component -}}
{{- $stores := list $s.store "rabbitmq" -}}
{{- if $s.smtp }}{{ $stores = append $stores "mailpit" }}{{ end -}}
{{- toJson $stores -}}
{{- end -}}

{{/* The services whose gRPC port another service calls: their Services are headless, so DNS
answers every ready pod's address and the caller balances over them (README "What the chart
does for you"). */}}
{{- define "shop.grpcServers" -}}
{{- $t := include "shop.services" . | fromYaml -}}
{{- $servers := list -}}
{{- range $name := keys $t | sortAlpha -}}
{{- range (index $t $name).callsGrpc | default list }}{{ $servers = append $servers . }}{{ end -}}
{{- end -}}
{{- $servers | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* sha256 of the data of Secret .name as the cluster holds it now, or "" when it does not
exist yet or cannot be read: `helm template` and client-side dry runs see no cluster (lookup
answers nothing there). Pod-template annotations carry it, so an upgrade after the Secret
changed rolls the pods. */}}
{{- define "shop.secretChecksum" -}}
{{- $secret := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- with $secret }}{{ .data | toJson | sha256sum }}{{ end -}}
{{- end -}}

{{/* The development values of a service's secret variables, pointing at the in-chart stores or,
for a store switched off, at infrastructure.<store>.external. Only rendered when the service has
no existingSecret (mode: development only). Passwords equal role names, as in
docker-compose.yml and deploy/local/stack.sh. */}}
{{- define "shop.devSecret" -}}
{{- $root := .root -}}
{{- $t := include "shop.services" $root | fromYaml -}}
{{- $s := index $t .component -}}
{{- $amqpUser := $s.role | default "gateway" -}}
{{- $host := dict -}}
{{- range $store := list $s.store "rabbitmq" -}}
{{- $address := include "shop.storeAddress" (dict "root" $root "store" $store) -}}
{{- if not $address -}}
{{- fail (printf "services.%s.existingSecret or infrastructure.%s.external is required: the in-chart %s is switched off (infrastructure.%s.enabled: false)" $.component $store $store $store) -}}
{{- end -}}
{{- $_ := set $host $store $address -}}
{{- end -}}
{{- if eq $s.store "postgres" }}
DATABASE_URL: {{ printf "postgres://%s:%s@%s/%s" $s.role $s.role $host.postgres $s.database | quote }}
{{- else if eq $s.store "mongodb" }}
MONGODB_URL: {{ printf "mongodb://%s:%s@%s/%s" $s.role $s.role $host.mongodb $s.database | quote }}
{{- else if eq $s.store "redis" }}
REDIS_URL: {{ printf "redis://%s" $host.redis | quote }}
{{- end }}
AMQP_URL: {{ printf "amqp://%s:%s@%s/%%2f" $amqpUser $amqpUser $host.rabbitmq | quote }}
{{- if eq .component "user-service" }}
SERVICE_CLIENTS: "order-service=dev-only-order-service-secret-0000000000,notification-service=dev-only-notification-service-secret-00000"
ADMIN_PASSWORD: "change-me-admin"
{{- else if eq .component "order-service" }}
SERVICE_SECRET: "dev-only-order-service-secret-0000000000"
{{- else if eq .component "notification-service" }}
SERVICE_SECRET: "dev-only-notification-service-secret-00000"
{{- end }}
{{- end -}}

{{/* The env of a service's container: its ConfigMap, then each secret variable by key. */}}
{{- define "shop.containerEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "shop.name" . }}
env:
{{- range $key, $optional := include "shop.secretKeys" . | fromYaml }}
  - name: {{ $key }}
    valueFrom:
      secretKeyRef:
        name: {{ include "shop.secretName" $ }}
        key: {{ $key }}
        {{- if $optional }}
        optional: true
        {{- end }}
{{- end }}
{{- end -}}
