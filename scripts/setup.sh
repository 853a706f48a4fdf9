#!/usr/bin/env bash
# Installs everything Bulkhead needs on a fresh Debian 12 machine of the project's kind.
# Idempotent: every step checks first, so a second run takes seconds.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: Bulkhead's lab and tests create network namespaces and load BPF programs; run as root" >&2
    exit 1
  fi
}
need_root

APT_PKGS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev iproute2 iputils-ping iperf3
  netcat-openbsd iptables nftables ipset bpftool python3 python3-venv containernetworking-plugins
  podman runc busybox-static nginx-light wrk chromium fonts-dejavu-core)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  log "cargo install bpf-linker (LLVM 22)"
  LLVM_PREFIX=/usr/lib/llvm-22 PATH=/usr/lib/llvm-22/bin:$PATH \
    cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22
fi

if ! mountpoint -q /sys/fs/bpf; then
  log "mount bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
if ! mountpoint -q /sys/kernel/tracing; then
  log "mount tracefs at /sys/kernel/tracing"
  mount -t tracefs nodev /sys/kernel/tracing || log "tracefs mount failed (only the detector needs it)"
fi
mkdir -p /var/run/netns

# The vendors' own Python clients, which fw-sync's tests point at the PAN-OS and FortiOS
# emulators, the official Kubernetes client checked against the API-server emulator, and
# kubernetes-validate for deploy/'s offline schema check, Prometheus's own client library whose
# parser checks the agent's metrics page (pinned; a venv so the system Python stays untouched).
PYENV=/opt/bulkhead/pyenv
PY_PKGS=(pan-python==0.26.0 fortigate-api==2.0.8 kubernetes==37.0.2 kubernetes-validate==1.37.0 prometheus-client==0.21.1)
if ! "$PYENV/bin/python3" -c 'import pan.xapi, fortigate_api, kubernetes, kubernetes_validate, prometheus_client' >/dev/null 2>&1; then
  log "python venv $PYENV: ${PY_PKGS[*]}"
  python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}"
fi
# podman with a CNI conflist that chains bulkhead-cni (ENVIRONMENT.md's recipe): the CNI
# backend, runc with cgroupfs (crun refuses the hybrid cgroup layout), the plugin folder the
# tests install bulkhead-cni into, and a busybox root file system (no registry is reachable).
CONTAINERS_CONF=/etc/containers/containers.conf
if ! grep -q "written by Bulkhead" "$CONTAINERS_CONF" 2>/dev/null; then
  if [ -s "$CONTAINERS_CONF" ]; then
    log "$CONTAINERS_CONF exists and is not Bulkhead's: left alone (the podman tests need the CNI backend)"
  else
    log "writing $CONTAINERS_CONF"
    mkdir -p /etc/containers
    cat > "$CONTAINERS_CONF" <<'CONF'
# written by Bulkhead's scripts/setup.sh
[containers]
default_ulimits = []

[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni", "/opt/bulkhead/cni/bin"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
  fi
fi
mkdir -p /opt/bulkhead/cni/bin /etc/cni/net.d
ROOTFS=/opt/bulkhead/rootfs/busybox
if [ ! -x "$ROOTFS/bin/busybox" ]; then
  log "busybox root file system in $ROOTFS"
  mkdir -p "$ROOTFS"/{bin,etc,proc,sys,dev,tmp,run}
  cp /bin/busybox "$ROOTFS/bin/busybox"
  for a in $("$ROOTFS/bin/busybox" --list); do
    [ -e "$ROOTFS/bin/$a" ] || ln -s busybox "$ROOTFS/bin/$a"
  done
fi
# kubectl comes with this machine kind (it is not in Debian): the emulator's tests need it.
if ! command -v kubectl >/dev/null 2>&1; then
  log "kubectl not found: the API-server emulator's kubectl test will fail (install kubectl 1.32)"
fi
log "ready"
