#!/usr/bin/env bash
# `make demo`: a 3-node lab with the real datapath, sample workloads in two namespaces, traffic
# between them across nodes, and what the cluster looks like. Leaves the lab up to explore;
# `flowscope lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
FS=(.venv/bin/flowscope --cluster "${DEMO_CLUSTER:-demo}")
IPAM=${DEMO_IPAM:-overlay}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lab up: 3 nodes, $IPAM IPAM"
"${FS[@]}" lab up --nodes 3 --ipam "$IPAM"

step "apply examples/ (namespaces, pods, a service)"
"${FS[@]}" apply -f examples/

step "waiting for pods"
for _ in $(seq 1 100); do
  pending=$("${FS[@]}" get pods -A -o json | .venv/bin/python -c \
    'import json,sys; print(sum(p.get("status",{}).get("phase")!="Running" for p in json.load(sys.stdin)["items"]))')
  [ "$pending" = 0 ] && break
  sleep 0.2
done
"${FS[@]}" get pods -A -o wide
"${FS[@]}" get nodes -o wide

step "traffic: every frontend pod to every backend pod, TCP and UDP, across nodes"
mapfile -t fe < <("${FS[@]}" get pods -n frontend -o name | sed 's|^pod/|frontend/|')
mapfile -t be < <("${FS[@]}" get pods -n backend -o name | sed 's|^pod/|backend/|')
for src in "${fe[@]}"; do
  for dst in "${be[@]}"; do
    "${FS[@]}" lab probe "$src" "$dst:8080" || true
    "${FS[@]}" lab probe "$src" "$dst:5353" --protocol UDP || true
  done
done

step "the outside world (overlay: masqueraded to the node's address)"
"${FS[@]}" lab exec "${fe[0]}" -- python3 -c \
  "import urllib.request as u; print('outside host saw us as', u.urlopen('http://10.224.0.254/clientip', timeout=2).read().decode())"

step "lab status"
"${FS[@]}" lab status
printf '\nThe lab stays up: try `%s lab exec frontend/web-1 -- ip addr`, then `%s lab down`.\n' \
  "${FS[*]}" "${FS[*]}"
