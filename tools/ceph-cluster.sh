#!/usr/bin/env bash
# A throwaway single-node Ceph cluster for tests and benchmarks.
#
#   tools/ceph-cluster.sh start DIR   bootstrap one mon, one mgr and one memstore
#                                     OSD on 127.0.0.1 (cephx on) with all state
#                                     in DIR, create the RBD pool, and print on
#                                     stdout only `export` lines to eval:
#                                     IMGFS_CEPH_CONF, IMGFS_CEPH_ID,
#                                     IMGFS_CEPH_KEYRING, IMGFS_CEPH_POOL,
#                                     IMGFS_CEPH_CHUNK_POOL.
#   tools/ceph-cluster.sh stop DIR    kill the daemons it started (by recorded
#                                     pid), wait for them, remove DIR. Idempotent.
#
# Refuses to start on a DIR that already holds a cluster. Messages go to stderr.
# Environment: IMGFS_CEPH_MEMSTORE_BYTES (OSD RAM size, default 2 GiB).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
say() { echo "ceph-cluster: $*" >&2; }
die() { say "$*"; exit 1; }

(($# == 2)) || usage
cmd="$1"
dir="$2"
[[ "$dir" == /* ]] || dir="$(pwd)/$dir"
marker="$dir/imgfs-ceph-cluster"
pool=imgfs-test
chunk_pool=imgfs-test-chunks

# Bounded client calls: a dead cluster is an error, never a hang.
cephc() { timeout 60 ceph -c "$dir/ceph.conf" --connect-timeout 10 "$@"; }
rbdc() { timeout 60 rbd -c "$dir/ceph.conf" "$@"; }

# Waits until "$@" succeeds, up to $1 seconds.
wait_for() {
  local limit="$1" what="$2"; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || { say "timed out waiting for $what"; return 1; }
    check_daemons || return 1
    sleep 0.5
  done
}

# Fails when a daemon we started has died (its log is shown).
check_daemons() {
  local name pid
  [[ -f "$dir/pids" ]] || return 0
  while read -r name pid; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) exited; last lines of its log:"
      tail -n 20 "$dir/log/$name.out" "$dir/log/$name.log" >&2 2>/dev/null || true
      return 1
    fi
  done <"$dir/pids"
}

# Runs a daemon in the foreground of a background job and records its pid.
run_daemon() {
  local name="$1"; shift
  "$@" -f </dev/null >>"$dir/log/$name.out" 2>&1 &
  echo "$name $!" >>"$dir/pids"
}

free_port() {
  local port i
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 20000))
    if ! ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

stop_cluster() {
  [[ -e "$dir" ]] || return 0
  [[ -f "$marker" ]] || die "$dir does not hold a cluster started by this script; not touching it"
  local name pid
  declare -a pids=()
  if [[ -f "$dir/pids" ]]; then
    while read -r name pid; do
      # Only a process still running our binary with our config: the pid
      # may have been reused since.
      if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF "$dir/ceph.conf"; then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
    done <"$dir/pids"
  fi
  local end=$((SECONDS + 30))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= end)); then
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
  done
  rm -rf "$dir"
}

start_cluster() {
  if [[ -e "$marker" || -e "$dir/ceph.conf" ]]; then
    die "$dir already holds a cluster; stop it first"
  fi
  if [[ -d "$dir" ]] && [[ -n "$(ls -A "$dir")" ]]; then
    die "$dir is not empty; give a new or empty directory"
  fi
  for b in ceph ceph-mon ceph-mgr ceph-osd monmaptool ceph-authtool rbd uuidgen; do
    command -v "$b" >/dev/null || die "$b is not installed (run tools/setup.sh)"
  done
  mkdir -p "$dir"
  touch "$marker"
  trap 'rc=$?; if ((rc != 0)); then say "start failed; stopping what was started"; stop_cluster || true; fi' EXIT
  mkdir -p "$dir"/{mon,mgr,osd,run,log,crash}

  local fsid port memstore_bytes
  fsid="$(uuidgen)"
  port="$(free_port)" || die "no free port found"
  memstore_bytes="${IMGFS_CEPH_MEMSTORE_BYTES:-2147483648}"

  cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port]
mon initial members = a
public network = 127.0.0.1/32
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
crash dir = $dir/crash
log to stderr = false
err to stderr = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
client mount timeout = 15
rados mon op timeout = 15
rados osd op timeout = 30

[mon]
mon data = $dir/mon
keyring = $dir/mon.keyring
mon cluster log file = $dir/log/cluster.log

[mgr]
mgr data = $dir/mgr
keyring = $dir/mgr/keyring

[osd]
osd data = $dir/osd
keyring = $dir/osd/keyring
osd objectstore = memstore
memstore device bytes = $memstore_bytes
osd memory target = 939524096

[client]
keyring = $dir/client.admin.keyring
# One socket per client instance: clients sharing one path collide, and the
# collision check can kill the first client with SIGPIPE.
admin socket = $dir/run/\$name.\$pid.\$cctid.asok
EOF

  say "bootstrapping in $dir (mon on 127.0.0.1:$port)"
  ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. \
    --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  chmod 600 "$dir/client.admin.keyring"
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
  ceph-mon --conf "$dir/ceph.conf" --mkfs -i a --monmap "$dir/monmap" \
    --keyring "$dir/mon.keyring" >/dev/null 2>>"$dir/log/mkfs.out"
  run_daemon mon.a ceph-mon --conf "$dir/ceph.conf" -i a
  wait_for 60 "the monitor" cephc mon stat

  cephc auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$dir/mgr/keyring" >/dev/null 2>&1
  run_daemon mgr.x ceph-mgr --conf "$dir/ceph.conf" -i x

  local osd_uuid osd_key osd_id
  osd_uuid="$(uuidgen)"
  osd_key="$(ceph-authtool --gen-print-key)"
  printf '{"cephx_secret": "%s"}\n' "$osd_key" >"$dir/osd-secret.json"
  osd_id="$(cephc osd new "$osd_uuid" -i "$dir/osd-secret.json")"
  rm -f "$dir/osd-secret.json"
  ceph-authtool --create-keyring "$dir/osd/keyring" --name "osd.$osd_id" \
    --add-key "$osd_key" >/dev/null
  ceph-osd --conf "$dir/ceph.conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" \
    >>"$dir/log/mkfs.out" 2>&1
  run_daemon "osd.$osd_id" ceph-osd --conf "$dir/ceph.conf" -i "$osd_id"
  wait_for 60 "the OSD to come up" bash -c \
    "timeout 30 ceph -c '$dir/ceph.conf' --connect-timeout 10 osd dump | grep -q '^osd.$osd_id up'"

  cephc osd pool create "$pool" 16 16 >/dev/null 2>&1
  rbdc pool init "$pool" >/dev/null
  cephc osd pool create "$chunk_pool" 16 16 >/dev/null 2>&1
  cephc osd pool application enable "$chunk_pool" imgfs >/dev/null 2>&1
  wait_for 60 "the pool to take RBD images" bash -c \
    "timeout 30 rbd -c '$dir/ceph.conf' create --size 1M '$pool/probe' && timeout 30 rbd -c '$dir/ceph.conf' rm --no-progress '$pool/probe'"

  trap - EXIT
  say "ready: ceph -c $dir/ceph.conf -s"
  printf 'export IMGFS_CEPH_CONF=%q\n' "$dir/ceph.conf"
  printf 'export IMGFS_CEPH_ID=%q\n' admin
  printf 'export IMGFS_CEPH_KEYRING=%q\n' "$dir/client.admin.keyring"
  printf 'export IMGFS_CEPH_POOL=%q\n' "$pool"
  printf 'export IMGFS_CEPH_CHUNK_POOL=%q\n' "$chunk_pool"
}

case "$cmd" in
  start) start_cluster ;;
  stop) stop_cluster ;;
  *) usage ;;
esac
