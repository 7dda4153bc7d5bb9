# Helpers for the live migration tests (migrate_*.sh). Source it after lib.sh
# and e2e_lib.sh. Two "hosts" are two stores with their own mounts; each qemu
# is a paused TCG qemu-system-x86_64 (-S) with one raw virtio disk (id disk0,
# cache=none, aio=native, as libvirt and nova configure it), driven through
# QMP the way libvirt drives a migration.

# mig_free_port: prints a TCP port on 127.0.0.1 that nobody listens on now.
mig_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# mig_qemu NAME DISK [QEMU ARGS...]: starts a paused qemu on DISK (a file, or
# a qemu "rbd:..." name) with QMP on $T/NAME.qmp, stopped by pid at exit; sets
# QEMU_PID. Its stdout (where qemu-io prints) goes to $T/NAME.out, line by
# line. Returns non-zero (stderr in $T/NAME.err) when qemu refuses to start.
mig_qemu() {
  local name="$1" disk="$2"
  shift 2
  rm -f "$T/$name.qmp"
  nice -n 5 stdbuf -oL qemu-system-x86_64 -machine pc,accel=tcg -nodefaults -display none -S -m 64 \
    -qmp "unix:$T/$name.qmp,server=on,wait=off" \
    -drive "file=$disk,format=raw,if=virtio,id=disk0,cache=none,aio=native" \
    "$@" >"$T/$name.out" 2>"$T/$name.err" </dev/null &
  QEMU_PID=$!
  on_exit "e2e_stop_pid $QEMU_PID"
  until [[ -S "$T/$name.qmp" ]]; do
    kill -0 "$QEMU_PID" 2>/dev/null || return 1
    sleep 0.05
  done
}

# mig_hmp NAME COMMAND: runs a human monitor command on qemu NAME, prints its
# output.
mig_hmp() {
  e2e_qmp "$T/$1.qmp" human-monitor-command "$(jq -nc --arg c "$2" '{"command-line": $c}')" | jq -r .
}

# mig_io NAME QEMU-IO-COMMAND: runs a qemu-io command (read, write ...) on
# disk0 of qemu NAME, through that qemu's block layer as its guest's I/O would
# go; prints qemu-io's output. Fails unless qemu-io reports the whole request
# done ("wrote N/N", "read N/N") and no error or failed pattern check.
mig_io() {
  local out before
  before="$(stat -c %s "$T/$1.out")"
  mig_hmp "$1" "qemu-io disk0 \"$2\"" >/dev/null
  out="$(tail -c +$((before + 1)) "$T/$1.out")"
  printf '%s\n' "$out"
  if [[ "$out" == *failed* || "$out" == *rror* || ! "$out" =~ (wrote|read)\ ([0-9]+)/([0-9]+) ]] ||
    [[ "${BASH_REMATCH[2]}" != "${BASH_REMATCH[3]}" ]]; then
    echo "qemu $1: qemu-io '$2': $out" >&2
    return 1
  fi
}

# mig_status NAME: prints qemu NAME's run state (running, paused, inmigrate,
# postmigrate, prelaunch ...).
mig_status() { e2e_qmp "$T/$1.qmp" query-status | jq -r .status; }

# mig_wait NAME: waits until the migration out of qemu NAME has ended and
# prints how it ended (completed, failed, cancelled).
mig_wait() {
  local st
  while :; do
    st="$(e2e_qmp "$T/$1.qmp" query-migrate | jq -r '.status // "none"')"
    case "$st" in
      completed | failed | cancelled) echo "$st"; return 0 ;;
    esac
    sleep 0.1
  done
}

# mig_migrate SRC DST: migrates qemu SRC into DST (started with -incoming
# defer) over TCP; returns once SRC reports the migration completed (fails
# otherwise). DST is left as migration left it (paused: its source was).
mig_migrate() {
  local src="$1" dst="$2" port st
  port="$(mig_free_port)"
  e2e_qmp "$T/$dst.qmp" migrate-incoming "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
  e2e_qmp "$T/$src.qmp" migrate "{\"uri\": \"tcp:127.0.0.1:$port\"}" >/dev/null
  st="$(mig_wait "$src")"
  [[ "$st" == completed ]] || fail "migration $src -> $dst: $st: $(e2e_qmp "$T/$src.qmp" query-migrate)"
  # The source reports completion before the destination has loaded the
  # last of the state; libvirt's Finish step waits for that too.
  while [[ "$(mig_status "$dst")" == inmigrate ]]; do sleep 0.05; done
}

# mig_quit NAME PID: quits qemu NAME and waits for it to be gone.
mig_quit() {
  e2e_qmp "$T/$1.qmp" quit >/dev/null || true
  tail --pid="$2" -f /dev/null
}
