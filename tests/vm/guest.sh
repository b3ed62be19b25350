# Sourced by every VM test's script, in the guest, as root: the kernel's TCMU modules, a vfs
# daemon as the TCMU userspace, and helpers to make configfs devices and tcm_loop LUNs.
set -euo pipefail
REPO=${REPO:?}
PY=${PY:-$REPO/.venv/bin/python}  # the Python that runs the tests or the bench
MNT=/tmp/vfs
STATE=/tmp/vfs-state
CORE=/sys/kernel/config/target/core
LOOP=/sys/kernel/config/target/loopback
mkdir -p "$MNT" "$STATE" /tmp/img
modprobe fuse
modprobe target_core_user
modprobe tcm_loop
modprobe sd_mod  # no udev in the guest: nothing loads drivers for new devices
modprobe sg

say() { echo "== $*"; }

on_exit() {
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "== failed ($rc); the daemon's log:"
    tail -40 /tmp/vfs.log 2>/dev/null || true
  fi
}
trap on_exit EXIT

wait_for() {  # wait_for SECONDS CONDITION...
  local t=$1
  shift
  for _ in $(seq $((t * 10))); do
    if eval "$@"; then return 0; fi
    sleep 0.1
  done
  echo "== timed out waiting for: $*" >&2
  return 1
}

start_vfs() {
  (cd "$REPO" && exec "$PY" -m vfs mount --foreground "$MNT" --state-dir "$STATE" --image-dir /tmp/img \
    --log-level debug >> /tmp/vfs.log 2>&1) &
  VFS_PID=$!
  wait_for 60 "[ -e $MNT/version ]"
  wait_for 30 "grep -q on $MNT/mgmt/tcmu/keys/kernel"
}

user_dev() {  # user_dev NAME CONFIG SIZE: a target_core_user device, enabled
  local d=$CORE/user_0/$1
  mkdir -p "$d"
  echo -n "dev_config=$2,dev_size=$3,hw_block_size=512" > "$d/control"
  # EAGAIN while a starting tcmu-runner blocks the kernel's netlink: try again for a while
  for _ in $(seq 50); do echo 1 2>/dev/null > "$d/enable" && return 0; sleep 0.2; done
  echo 1 > "$d/enable"
}

loop_lun() {  # loop_lun NAME: a tcm_loop LUN over it (the nexus first); prints its /dev/sdX
  local t=$LOOP/naa.5001405000000001/tpgt_1
  mkdir -p "$t/lun/lun_0"
  echo naa.5001405000000002 > "$t/nexus"
  ln -s "$CORE/user_0/$1" "$t/lun/lun_0/$1"
  wait_for 60 "ls -d /sys/block/sd* >/dev/null 2>&1"
  local sd
  sd=$(basename "$(ls -d /sys/block/sd* | head -1)")
  wait_for 30 "[ -b /dev/$sd ]"
  echo "/dev/$sd"
}

disk() {  # disk NAME CONFIG SIZE: a configfs device served here, as a tcm_loop disk; its /dev/sdX
  user_dev "$1" "$2" "$3"
  wait_for 30 "grep -q '^kernel_uio uio' $MNT/devices/$1/status"
  loop_lun "$1"
}

system_bus() {  # a system bus with the policy vfs ships (setup-debian installs it on a host)
  mkdir -p /run/dbus /etc/dbus-1/system.d
  cp "$REPO/mountscripts/vfs-tcmu.dbus.conf" /etc/dbus-1/system.d/vfs-tcmu.conf
  # tcmu-runner's activation file would start it for a name nobody owns: vfs owns it here
  dbus-uuidgen --ensure=/etc/machine-id
  dbus-daemon --system --fork --nopidfile
}

conformance() {  # conformance SG SPEC...: libiscsi's iscsi-test-cu on SG, a $CONF_TAG line per result
  local sg=$1 spec out tag=${CONF_TAG:-CONF}
  shift
  for spec in "$@"; do
    out=$(iscsi-test-cu -d -n --test="$spec" "$sg" 2>&1 || true)  # exits 1 when any test fails
    echo "$out" | awk -v t="$tag" '/^ +tests /{print t, "ran", $3, "passed", $4}'
    echo "$out" | { grep -oE '^Suite \S+, Test \S+ had failures' || true; } |
      awk -v t="$tag" '{s=$2; sub(",", "", s); print t, "fail", s "." $4}'
  done
}
