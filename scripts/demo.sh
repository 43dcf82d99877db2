#!/usr/bin/env bash
# `make demo`: a 3-node lab with the real datapath, sample workloads in two namespaces, traffic
# between them across nodes, and what the cluster looks like. Leaves the lab up to explore;
# `flowscope lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
FS=(.venv/bin/flowscope --cluster "${DEMO_CLUSTER:-demo}")
IPAM=${DEMO_IPAM:-overlay}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lab up: 3 nodes, $IPAM IPAM, a Kafka broker the agents publish their flows to"
"${FS[@]}" lab up --nodes 3 --ipam "$IPAM" --kafka

step "apply examples/ (namespaces, NetworkPolicies, pods, a service)"
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

step "traffic: every frontend pod to every backend pod across nodes (policy: TCP 8080 only)"
mapfile -t fe < <("${FS[@]}" get pods -n frontend -o name | sed 's|^pod/|frontend/|')
mapfile -t be < <("${FS[@]}" get pods -n backend -o name | sed 's|^pod/|backend/|')
for src in "${fe[@]}"; do
  for dst in "${be[@]}"; do
    "${FS[@]}" lab probe "$src" "$dst:8080" || true
    "${FS[@]}" lab probe "$src" "$dst:5353" --protocol UDP --timeout 1 || true
  done
done

step "reachability matrix of the two namespaces, TCP 8080 (rows: from, columns: to)"
"${FS[@]}" lab matrix --namespaces frontend,backend --port 8080

step "a service with two backends, load-balanced at the socket (no kube-proxy, no iptables)"
"${FS[@]}" get services,endpointslices -n frontend -o wide
for _ in 1 2 3 4 5 6; do
  "${FS[@]}" lab probe "${be[0]}" web.frontend:80 || true  # the name through the cluster DNS
done
step "the datapath's own view of it on node-1 (what the socket-LB and NodePort maps hold)"
"${FS[@]}" service list --node node-1
step "the same service as a NodePort, at every node's address"
mapfile -t node_ips < <("${FS[@]}" get nodes -o json | .venv/bin/python -c \
  'import json,sys; [print(a["address"]) for n in json.load(sys.stdin)["items"] for a in n.get("status",{}).get("addresses",[]) if a.get("type")=="InternalIP"]')
for ip in "${node_ips[@]}"; do
  "${FS[@]}" lab probe "${be[0]}" "$ip:30080" || true
done
step "a Deployment (3 replicas) behind a LoadBalancer Service: an address from the lab's pool"
"${FS[@]}" apply -f examples/deployments/
for _ in $(seq 1 150); do
  ready=$("${FS[@]}" get deployment web -n shop -o json | .venv/bin/python -c \
    'import json,sys; print(json.load(sys.stdin).get("status",{}).get("readyReplicas",0))')
  lb=$("${FS[@]}" get service web -n shop -o json | .venv/bin/python -c \
    'import json,sys; print(*[i["ip"] for i in json.load(sys.stdin).get("status",{}).get("loadBalancer",{}).get("ingress",[])][:1])')
  [ "$ready" = 3 ] && [ -n "$lb" ] && break
  sleep 0.2
done
"${FS[@]}" get deployments,replicasets,services -n shop -o wide
echo "from the outside host, to the LoadBalancer address $lb (spread over the nodes by the fabric):"
for _ in 1 2 3 4; do
  "${FS[@]}" lab probe world "$lb:80" || true
done

step "each translation as a flow: client -> service -> backend"
"${FS[@]}" observe --last 4 --type trace-sock --namespace backend

step "why: policy trace of an allowed and a denied connection"
"${FS[@]}" policy trace --from "${fe[0]}" --to "${be[0]}" --port 8080 || true
"${FS[@]}" policy trace --from "${fe[0]}" --to "${be[0]}" --port 5353 --protocol UDP || true

step "live flows: the datapath's verdicts on every node (flowscope observe)"
"${FS[@]}" observe --last 12 --namespace backend --print-node-name
step "drops only"
"${FS[@]}" observe --last 6 --verdict DROPPED --namespace backend

step "the same flows streamed through Kafka: every node publishes to the lab's broker"
KAFKA=$(.venv/bin/python -c 'import sys; from flowscope import clusterinfo; from dataplane.lab import kafka
print(kafka.of(clusterinfo.load(sys.argv[1])).bootstrap)' "${DEMO_CLUSTER:-demo}")
echo "broker: $KAFKA (topics flowscope.flows, flowscope.lost, flowscope.nodes)"
"${FS[@]}" observe --kafka "$KAFKA" --last 8 --namespace backend --print-node-name

step "the pipeline's health: flows held, seen and lost per node, the relay, the Kafka publishers"
"${FS[@]}" status

step "live: observe --follow for 4 s while a frontend pod keeps calling the web service"
( for _ in $(seq 1 12); do "${FS[@]}" lab probe "${fe[0]}" web.frontend:80 >/dev/null || true; sleep 0.2; done ) &
timeout 4 "${FS[@]}" observe --follow --namespace frontend --type trace-sock || true
wait

step "the outside world (overlay: masqueraded to the node's address)"
"${FS[@]}" lab exec "${fe[0]}" -- python3 -c \
  "import urllib.request as u; print('outside host saw us as', u.urlopen('http://10.224.0.254/clientip', timeout=2).read().decode())"

step "DNS-FQDN egress policy: the web pods may reach api.example.com, and nothing else outside"
"${FS[@]}" apply -f examples/fqdn/
sleep 1
"${FS[@]}" lab probe "${fe[0]}" 10.224.0.253:80 --timeout 1 || true   # api.example.com's address, guessed
"${FS[@]}" lab probe "${fe[0]}" api.example.com:80 || true            # asked through DNS first
"${FS[@]}" lab probe "${fe[0]}" other.example.net:80 --timeout 1 || true
step "their DNS lookups as L7 flows, and the names on the flows that followed"
"${FS[@]}" observe --type l7 --last 4 --from-pod "${fe[0]}"
"${FS[@]}" observe --to-fqdn "*.example.*" --last 4

step "HTTP rules (examples/l7/): the web pods may GET /hostname and /public... on the api, nothing else"
"${FS[@]}" apply -f examples/l7/
API_IP=$("${FS[@]}" get pod "${be[0]#backend/}" -n backend -o json | .venv/bin/python -c \
  'import json,sys; print(json.load(sys.stdin)["status"]["podIP"])')
http_get() {  # status and body of GET $1 from the first web pod
  "${FS[@]}" lab exec "${fe[0]}" -- python3 -c "
import urllib.error, urllib.request as u
try:
    r = u.urlopen('http://$API_IP:8080$1', timeout=5); print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())" || true
}
sleep 1
echo "GET /hostname -> $(http_get /hostname)"
echo "GET /admin    -> $(http_get /admin)"
"${FS[@]}" observe --type l7 --last 4 --to-pod "${be[0]}"

step "the exporters: Prometheus metrics and audit logs from the Kafka topic (flowscope export)"
EXPORT_DIR=$(mktemp -d /tmp/flowscope-demo-export.XXXXXX)
metrics() { .venv/bin/python -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9965/metrics", timeout=2).read().decode())'; }
cat > "$EXPORT_DIR/export.yaml" <<YAML
source: {kafka: {bootstrap: "$KAFKA"}}
prometheus: {listen: "127.0.0.1:9965", metrics: [flow, "drop:sourceContext=pod", "dns:query"]}
audit: {path: "$EXPORT_DIR/audit.jsonl"}
YAML
"${FS[@]}" export --config "$EXPORT_DIR/export.yaml" > "$EXPORT_DIR/export.log" 2>&1 &
EXPORT_PID=$!
for _ in $(seq 1 100); do
  [ -s "$EXPORT_DIR/audit.jsonl" ] && metrics >/dev/null 2>&1 && break
  sleep 0.2
done
sleep 2
metrics | grep -E '^hubble_(flows_processed|drop|dns_queries)_total' | sort -t' ' -k2 -rn | head -8 || true
echo "audit log: $(cat "$EXPORT_DIR"/audit.jsonl 2>/dev/null | wc -l) lines (Hubble JSON, redacted, fsynced before the offsets are committed)"
kill "$EXPORT_PID" 2>/dev/null || true
wait "$EXPORT_PID" 2>/dev/null || true
rm -rf "$EXPORT_DIR"

step "lab status"
"${FS[@]}" lab status

step "background traffic, so that the flows stay live (a lab daemon: lab down ends it)"
"${FS[@]}" lab traffic --detach --every 0.5
printf '\nThe lab stays up. Watch it live in the terminal UI:\n  %s tui\n' "${FS[*]}"
printf '(/ filter, Enter details, d drops, t top talkers, m service map, ? help, q quit)\n'
printf 'Then try `%s lab exec frontend/web-1 -- ip addr`, and `%s lab down`.\n' \
  "${FS[*]}" "${FS[*]}"
