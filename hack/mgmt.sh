#!/usr/bin/env bash
# A Cluster API management cluster without kind or containers: every part
# runs as a local process on loopback, with its state under one folder.
#
#   hack/mgmt.sh up      start it (idempotent; silent when already up)
#   hack/mgmt.sh down    stop every process and delete the state folder
#   hack/mgmt.sh status  one line per process
#
# Parts: etcd, kube-apiserver and kube-controller-manager (hack/build-kube.sh),
# the Cluster API core, kubeadm bootstrap and kubeadm control-plane managers
# (hack/build-capi.sh), and capmvm (bin/capmvm, from `make build`). The
# certificates come from hack/mgmt (a CA, the API server's, an admin client
# certificate and one serving certificate for every webhook server); the
# providers' CRDs and webhook configurations are applied with their webhooks
# rewritten to url: https://127.0.0.1:PORT/... and the CA as caBundle. The
# admin kubeconfig is <state>/kubeconfig.
#
# Environment:
#   MGMT_DIR        state folder (default: .mgmt in the repository)
#   MGMT_PORT_BASE  first of the ~50 loopback ports used (default 17400;
#                   remembered in the state folder)
#   CAPMVM_BIN      the capmvm manager (default: bin/capmvm)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state=${MGMT_DIR:-$root/.mgmt}
capmvm_bin=${CAPMVM_BIN:-$root/bin/capmvm}

die() {
  echo "mgmt: $*" >&2
  exit 1
}

# The processes, in start order; down stops them in reverse.
components=(etcd kube-apiserver kube-controller-manager capi-core capi-kubeadm-bootstrap capi-kubeadm-control-plane capmvm)

pidfile() { echo "$state/run/$1.pid"; }

# running NAME: the process recorded for NAME is alive (and is still the
# program we started, not a recycled pid).
running() {
  local f pid
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  pid=$(<"$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$(<"$state/run/$1.exe")"
}

# start NAME ENV... -- EXE ARGS...: starts a process in its own session
# (so that down can stop it and its children), logging to logs/NAME.log.
start() {
  local name=$1 env=()
  shift
  while [ "$1" != "--" ]; do
    env+=("$1")
    shift
  done
  shift
  running "$name" && return 0
  echo "$1" >"$state/run/$name.exe"
  env "${env[@]}" setsid "$@" >>"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# wait_ready NAME URL [CURL ARGS...]: waits until URL answers 200, failing
# with the end of NAME's log when the process dies or after two minutes.
wait_ready() {
  local name=$1 url=$2 i
  shift 2
  for ((i = 0; i < 240; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then
      return 0
    fi
    if ! running "$name"; then
      echo "mgmt: $name exited; last lines of $state/logs/$name.log:" >&2
      tail -n 30 "$state/logs/$name.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "mgmt: $name did not get ready at $url in 2 minutes; last lines of $state/logs/$name.log:" >&2
  tail -n 30 "$state/logs/$name.log" >&2
  exit 1
}

load_ports() {
  if [ ! -f "$state/ports.env" ]; then
    local b=${MGMT_PORT_BASE:-17400}
    cat >"$state/ports.env" <<PORTS
ETCD_PORT=$b
ETCD_PEER_PORT=$((b + 1))
APISERVER_PORT=$((b + 2))
KCM_PORT=$((b + 3))
CORE_WEBHOOK_PORT=$((b + 10))
CORE_HEALTH_PORT=$((b + 11))
CORE_METRICS_PORT=$((b + 12))
BOOTSTRAP_WEBHOOK_PORT=$((b + 20))
BOOTSTRAP_HEALTH_PORT=$((b + 21))
BOOTSTRAP_METRICS_PORT=$((b + 22))
CONTROLPLANE_WEBHOOK_PORT=$((b + 30))
CONTROLPLANE_HEALTH_PORT=$((b + 31))
CONTROLPLANE_METRICS_PORT=$((b + 32))
CAPMVM_WEBHOOK_PORT=$((b + 40))
CAPMVM_HEALTH_PORT=$((b + 41))
CAPMVM_METRICS_PORT=$((b + 42))
PORTS
  fi
  # shellcheck disable=SC1091
  . "$state/ports.env"
}

healthy() {
  local c
  for c in "${components[@]}"; do running "$c" || return 1; done
  curl -fsS -o /dev/null --max-time 2 --cacert "$state/pki/ca.crt" \
    --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null
}

write_kubeconfig() {
  local b64="base64 -w0"
  cat >"$state/kubeconfig.tmp" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: mgmt
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 <"$state/pki/ca.crt")
users:
- name: mgmt-admin
  user:
    client-certificate-data: $($b64 <"$state/pki/admin.crt")
    client-key-data: $($b64 <"$state/pki/admin.key")
contexts:
- name: mgmt
  context:
    cluster: mgmt
    user: mgmt-admin
current-context: mgmt
KCFG
  chmod 600 "$state/kubeconfig.tmp"
  mv "$state/kubeconfig.tmp" "$state/kubeconfig"
}

# capmvm_args: the capmvm flags for this cluster, by the names its --help
# lists (the manager's flag set is its own).
capmvm_args() {
  local help
  help=$("$capmvm_bin" --help 2>&1 || true)
  has() { grep -qE -- "(^|[[:space:],])--?$1([[:space:]=]|$)" <<<"$help"; }
  args=()
  has leader-elect && args+=(--leader-elect=false)
  if has health-addr; then args+=(--health-addr="127.0.0.1:$CAPMVM_HEALTH_PORT")
  elif has health-probe-bind-address; then args+=(--health-probe-bind-address="127.0.0.1:$CAPMVM_HEALTH_PORT")
  else die "capmvm --help lists no health address flag (--health-addr)"; fi
  if has metrics-bind-addr; then args+=(--metrics-bind-addr="127.0.0.1:$CAPMVM_METRICS_PORT")
  elif has metrics-bind-address; then args+=(--metrics-bind-address="127.0.0.1:$CAPMVM_METRICS_PORT")
  elif has diagnostics-address; then args+=(--diagnostics-address="127.0.0.1:$CAPMVM_METRICS_PORT")
  fi
  has insecure-diagnostics && args+=(--insecure-diagnostics)
  has webhook-port || die "capmvm --help lists no --webhook-port flag"
  args+=(--webhook-port="$CAPMVM_WEBHOOK_PORT")
  has webhook-cert-dir || die "capmvm --help lists no --webhook-cert-dir flag"
  args+=(--webhook-cert-dir="$state/pki/webhook-server")
}

up() {
  if [ -f "$state/ports.env" ]; then
    load_ports
    healthy && return 0
  fi
  [ -x "$capmvm_bin" ] || die "$capmvm_bin not found: build the capmvm manager first (make build, or go build -o bin/ ./cmd/capmvm), or point CAPMVM_BIN at it"
  local kube capi
  kube=$("$root/hack/build-kube.sh" -p) || die "building the Kubernetes binaries failed"
  capi=$("$root/hack/build-capi.sh" -p) || die "building Cluster API failed"
  mkdir -p "$state"/{run,logs,etcd,bin,manifests}
  chmod 700 "$state"
  load_ports
  healthy && return 0

  echo "mgmt: starting the management cluster in $state" >&2
  local kubectl="$kube/kubectl"
  (cd "$root" && go build -o "$state/bin/mgmt" ./hack/mgmt) || die "building hack/mgmt failed"
  "$state/bin/mgmt" certs "$state/pki"
  # The webhook servers watch this folder: write it once.
  if [ ! -d "$state/pki/webhook-server" ]; then
    mkdir -p "$state/pki/webhook-server.tmp"
    cp "$state/pki/webhook.crt" "$state/pki/webhook-server.tmp/tls.crt"
    cp "$state/pki/webhook.key" "$state/pki/webhook-server.tmp/tls.key"
    mv "$state/pki/webhook-server.tmp" "$state/pki/webhook-server"
  fi
  write_kubeconfig
  export KUBECONFIG="$state/kubeconfig"
  local pki="$state/pki"

  start etcd -- "$kube/etcd" --name mgmt --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "mgmt=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync
  wait_ready etcd "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver -- "$kube/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --cert-dir "$state/apiserver" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC --allow-privileged=true
  wait_ready kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" \
    --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key"

  start kube-controller-manager -- "$kube/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$state/kube-controller-manager" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials --leader-elect=false
  wait_ready kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" --cacert "$pki/ca.crt" -k

  # CRDs and webhooks of every provider, served by the local processes.
  local m="$state/manifests" url="https://127.0.0.1"
  "$state/bin/mgmt" webhooks -crds -ca "$pki/ca.crt" -url "$url:$CORE_WEBHOOK_PORT" "$capi/components/core.yaml" >"$m/core.yaml"
  "$state/bin/mgmt" webhooks -crds -ca "$pki/ca.crt" -url "$url:$BOOTSTRAP_WEBHOOK_PORT" "$capi/components/bootstrap-kubeadm.yaml" >"$m/bootstrap-kubeadm.yaml"
  "$state/bin/mgmt" webhooks -crds -ca "$pki/ca.crt" -url "$url:$CONTROLPLANE_WEBHOOK_PORT" "$capi/components/control-plane-kubeadm.yaml" >"$m/control-plane-kubeadm.yaml"
  local capmvm_manifests=("$root"/config/crd/bases/*.yaml)
  [ -f "$root/config/webhook/manifests.yaml" ] && capmvm_manifests+=("$root/config/webhook/manifests.yaml")
  "$state/bin/mgmt" webhooks -crds -ca "$pki/ca.crt" -url "$url:$CAPMVM_WEBHOOK_PORT" "${capmvm_manifests[@]}" >"$m/capmvm.yaml"
  local ns
  for ns in capi-system capi-kubeadm-bootstrap-system capi-kubeadm-control-plane-system capmvm-system; do
    "$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  done
  # Server-side: some CRDs exceed the client-side apply annotation limit.
  "$kubectl" apply --server-side --force-conflicts --field-manager mgmt \
    -f "$m/core.yaml" -f "$m/bootstrap-kubeadm.yaml" -f "$m/control-plane-kubeadm.yaml" -f "$m/capmvm.yaml" >/dev/null
  "$kubectl" wait --for condition=Established --timeout 60s crd --all >/dev/null

  local common=(--leader-elect=false --insecure-diagnostics --webhook-cert-dir "$pki/webhook-server")
  start capi-core KUBECONFIG="$KUBECONFIG" POD_NAMESPACE=capi-system POD_NAME=capi-controller-manager -- \
    "$capi/capi-manager" "${common[@]}" \
    --webhook-port "$CORE_WEBHOOK_PORT" --health-addr "127.0.0.1:$CORE_HEALTH_PORT" \
    --diagnostics-address "127.0.0.1:$CORE_METRICS_PORT" \
    --feature-gates MachinePool=true,ClusterTopology=true
  start capi-kubeadm-bootstrap KUBECONFIG="$KUBECONFIG" POD_NAMESPACE=capi-kubeadm-bootstrap-system POD_NAME=capi-kubeadm-bootstrap-controller-manager -- \
    "$capi/kubeadm-bootstrap-manager" "${common[@]}" \
    --webhook-port "$BOOTSTRAP_WEBHOOK_PORT" --health-addr "127.0.0.1:$BOOTSTRAP_HEALTH_PORT" \
    --diagnostics-address "127.0.0.1:$BOOTSTRAP_METRICS_PORT" \
    --feature-gates MachinePool=true
  start capi-kubeadm-control-plane KUBECONFIG="$KUBECONFIG" POD_NAMESPACE=capi-kubeadm-control-plane-system POD_NAME=capi-kubeadm-control-plane-controller-manager -- \
    "$capi/kubeadm-control-plane-manager" "${common[@]}" \
    --webhook-port "$CONTROLPLANE_WEBHOOK_PORT" --health-addr "127.0.0.1:$CONTROLPLANE_HEALTH_PORT" \
    --diagnostics-address "127.0.0.1:$CONTROLPLANE_METRICS_PORT" \
    --feature-gates MachinePool=true,ClusterTopology=true
  capmvm_args
  start capmvm KUBECONFIG="$KUBECONFIG" POD_NAMESPACE=capmvm-system -- "$capmvm_bin" "${args[@]}"

  wait_ready capi-core "http://127.0.0.1:$CORE_HEALTH_PORT/readyz"
  wait_ready capi-kubeadm-bootstrap "http://127.0.0.1:$BOOTSTRAP_HEALTH_PORT/readyz"
  wait_ready capi-kubeadm-control-plane "http://127.0.0.1:$CONTROLPLANE_HEALTH_PORT/readyz"
  wait_ready capmvm "http://127.0.0.1:$CAPMVM_HEALTH_PORT/readyz"
  # The webhook servers answer TLS (any HTTP status) once they serve.
  local p
  for p in "capi-core:$CORE_WEBHOOK_PORT" "capi-kubeadm-bootstrap:$BOOTSTRAP_WEBHOOK_PORT" \
    "capi-kubeadm-control-plane:$CONTROLPLANE_WEBHOOK_PORT" "capmvm:$CAPMVM_WEBHOOK_PORT"; do
    wait_webhook "${p%%:*}" "${p##*:}"
  done
  echo "mgmt: up; export KUBECONFIG=$state/kubeconfig" >&2
}

# wait_webhook NAME PORT: waits until NAME's webhook server completes a TLS
# handshake with the cluster's CA (any HTTP status will do).
wait_webhook() {
  local name=$1 port=$2 i
  for ((i = 0; i < 120; i++)); do
    if curl -sS -o /dev/null --max-time 2 --cacert "$state/pki/ca.crt" "https://127.0.0.1:$port/" 2>/dev/null; then
      return 0
    fi
    running "$name" || break
    sleep 0.5
  done
  echo "mgmt: the webhook server of $name does not answer on 127.0.0.1:$port; last lines of $state/logs/$name.log:" >&2
  tail -n 30 "$state/logs/$name.log" >&2
  exit 1
}

down() {
  [ -d "$state" ] || return 0
  local i c pid
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    c=${components[i]}
    running "$c" || continue
    pid=$(<"$(pidfile "$c")")
    # Each process leads its own session and process group (setsid).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((j = 0; j < 40; j++)); do
      running "$c" || break
      sleep 0.25
    done
    if running "$c"; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$state"
}

status() {
  [ -d "$state" ] || {
    echo "mgmt: not up ($state does not exist)"
    return 1
  }
  local c rc=0
  for c in "${components[@]}"; do
    if running "$c"; then
      echo "$c: running (pid $(<"$(pidfile "$c")"))"
    else
      echo "$c: stopped"
      rc=1
    fi
  done
  echo "kubeconfig: $state/kubeconfig"
  return $rc
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
