#!/usr/bin/env bash
# Installs what flowscope needs on a fresh Debian 12 machine, as root. Idempotent: when everything
# is present it only checks, which takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${FLOWSCOPE_VENV:-$ROOT/.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: flowscope's lab and datapath need root; run as root (sudo make ...)" >&2
  exit 1
fi

# --- Debian packages -------------------------------------------------------------------------
APT_PKGS=(python3-bpfcc bpftool linux-headers-amd64 iproute2 iputils-ping etcd-server
          containernetworking-plugins iperf3 tmux prometheus nftables iptables procps util-linux)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # apt starts these services; flowscope runs its own instances on its own ports
  for svc in prometheus prometheus-node-exporter etcd; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
fi

# --- kernel headers for bcc: the running kernel has no package of its own ------------------------
KDIR=/lib/modules/$(uname -r)
if [ ! -e "$KDIR/build/Makefile" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$hdr" ] || { echo "setup: no kernel headers under /usr/src; apt-get install linux-headers-amd64" >&2; exit 1; }
  log "linking kernel headers $hdr for bcc"
  mkdir -p "$KDIR"
  ln -sfn "$hdr" "$KDIR/build"
  ln -sfn "$common" "$KDIR/source"
fi

# --- filesystems bcc and pinning need ------------------------------------------------------------
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
if ! mount | grep -q "type cgroup2"; then
  mkdir -p /sys/fs/cgroup/unified
  mount -t cgroup2 none /sys/fs/cgroup/unified
fi

# --- Python venv with bcc importable -------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Only bcc from Debian's dist-packages: a whole-directory .pth would drag in Debian's old PyYAML etc.
mkdir -p "$VENV/debian-bcc"
ln -sfn /usr/lib/python3/dist-packages/bcc "$VENV/debian-bcc/bcc"
echo "$VENV/debian-bcc" > "$site/debian-bcc.pth"

stamp="$VENV/.flowscope-deps"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python dependencies (pip install -e .[dev])"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # compat mode puts the source tree on a .pth path: no import hook, ~13 ms less per Python
  # start, which the CNI plugin (one process per ADD) feels
  "$VENV/bin/pip" install -q -e ".[dev]" --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi
# bytecode ahead of time: the plugin must not recompile itself on every call (and CI may set
# PYTHONDONTWRITEBYTECODE)
"$VENV/bin/python" -m compileall -q -j 0 flowscope dataplane probes collector exporters tui >/dev/null
# console scripts on PATH for the lab's runtime (it execs flowscope-cni like containerd does)
for s in flowscope flowscope-cni; do ln -sfn "$VENV/bin/$s" "/usr/local/bin/$s"; done
# --- npm: @grafana/schema + typescript, to check the Grafana dashboards (exporters/grafana) -----
# Installed outside the repo (FLOWSCOPE_NPM, default /var/cache/flowscope/npm); pinned versions.
# Offline-tolerant: a cache already holding them is used as is; a failed install only warns
# (tests/exporters/grafana says what is missing).
NPM_DIR=${FLOWSCOPE_NPM:-/var/cache/flowscope/npm}
NPM_PKGS=("@grafana/schema@13.2.3" "typescript@5.9.3")
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "installing Debian packages: nodejs npm"
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm \
    >/dev/null || log "warning: nodejs/npm not installed; dashboard type checks will fail"
fi
npm_want="${NPM_PKGS[*]}"
if command -v npm >/dev/null && [ "$(cat "$NPM_DIR/.flowscope-npm" 2>/dev/null)" != "$npm_want" ]; then
  log "installing npm packages into $NPM_DIR: $npm_want"
  mkdir -p "$NPM_DIR"
  [ -f "$NPM_DIR/package.json" ] || echo '{"name":"flowscope-npm-cache","private":true}' \
    > "$NPM_DIR/package.json"
  if (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent "${NPM_PKGS[@]}" >/dev/null); then
    echo "$npm_want" > "$NPM_DIR/.flowscope-npm"
  else
    log "warning: npm install failed (offline?); dashboard type checks need $npm_want in $NPM_DIR"
  fi
fi

log "ready ($VENV)"
