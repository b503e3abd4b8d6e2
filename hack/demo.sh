#!/usr/bin/env bash
# The demo: starts a private containerd, a registry with the test images and
# flintlockd, creates a microVM through the API with fl, and shows its
# console as it boots. "hack/demo.sh down" stops it all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
demo=${DEMO_DIR:-$root/.demo}
bin=$root/bin
fl() { "$bin/fl" --insecure --address 127.0.0.1:9090 "$@"; }

down() {
  if [ -f "$demo/flintlockd.pid" ] && kill -0 "$(cat "$demo/flintlockd.pid")" 2>/dev/null; then
    for uid in $(fl microvm list -o json 2>/dev/null | jq -r '.microvm[]?.spec.uid' 2>/dev/null); do
      fl microvm delete "$uid" --wait >/dev/null 2>&1 || true
    done
  fi
  for p in flintlockd devenv; do
    if [ -f "$demo/$p.pid" ]; then
      kill "$(cat "$demo/$p.pid")" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$(cat "$demo/$p.pid")" 2>/dev/null || break; sleep 0.2; done
      rm -f "$demo/$p.pid"
    fi
  done
}

if [ "${1:-}" = "down" ]; then
  down
  echo "demo stopped"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (containerd, mounts, QEMU)" >&2
  exit 1
fi
down
mkdir -p "$demo"
go build -o "$bin/devenv" ./hack/devenv

echo "==> starting containerd and a registry on loopback; building and pushing the guest images"
setsid "$bin/devenv" --dir "$demo" >"$demo/devenv.log" 2>&1 &
echo $! >"$demo/devenv.pid"
for _ in $(seq 1800); do
  [ -f "$demo/env" ] && break
  kill -0 "$(cat "$demo/devenv.pid")" 2>/dev/null || { cat "$demo/devenv.log"; exit 1; }
  sleep 0.5
done
# shellcheck disable=SC1091
. "$demo/env"
echo "    kernel image: $KERNEL_IMAGE"
echo "    root image:   $ROOT_IMAGE"

echo "==> starting flintlockd (gRPC 127.0.0.1:9090, HTTP 127.0.0.1:8090)"
setsid "$bin/flintlockd" run --insecure \
  --grpc-endpoint 127.0.0.1:9090 --http-endpoint 127.0.0.1:8090 --metrics-endpoint 127.0.0.1:9091 \
  --state-dir "$demo/state" --containerd-socket "$CONTAINERD_ADDRESS" >"$demo/flintlockd.log" 2>&1 &
echo $! >"$demo/flintlockd.pid"
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:9091/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs http://127.0.0.1:9091/readyz >/dev/null || { cat "$demo/flintlockd.log"; exit 1; }

cat >"$demo/user-data" <<'UD'
#!/bin/sh
echo "Hello from Liquid Metal: this line came from the user-data of the CreateMicroVM request"
UD
echo "==> fl microvm create --name demo ..."
uid=$(fl microvm create --name demo --namespace default --vcpu 1 --memory 256 \
  --kernel-image "$KERNEL_IMAGE" --initrd-image "$INITRD_IMAGE" --root-image "$ROOT_IMAGE" \
  --user-data-file "$demo/user-data" -o json | jq -r .spec.uid)
fl microvm wait "$uid" --timeout 5m
echo "==> the microVM's serial console:"
timeout 60 "$bin/fl" --insecure --address 127.0.0.1:9090 microvm console -f "$uid" \
  | sed '/LIQUIDMETAL-GUEST: user-data exited/q' || true
cat <<EOF

The microVM runs. Inspect and delete it with:
  export PATH=$bin:\$PATH
  fl --insecure microvm list
  fl --insecure microvm get $uid
  fl --insecure microvm console -f $uid
  fl --insecure microvm delete $uid
  curl -s http://127.0.0.1:8090/v1alpha1/microvms | jq .
Stop everything with: make demo-down
EOF
