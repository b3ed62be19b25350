# The bench's kernel group, in the test VM (tests/vm/vm.py): fio through the kernel's sd on
# tcm_loop LUNs over a vfs `file` device, Debian's tcmu-runner (its qcow handler on a raw image:
# it ships no file handler) and the in-kernel rd_mcp ramdisk (the ceiling). Two TCMU daemons
# cannot share the kernel (each answers every device's netlink message), so each round runs vfs,
# then tcmu-runner, swapping the daemons; their devices stay in configfs between turns and each
# daemon finds its own again. One JSON line per fio sample; with CONFORMANCE=1, libiscsi's SCSI
# family on both TCMU disks (CONF-vfs / CONF-tcmu-runner lines).
. "$REPO/tests/vm/guest.sh"
SIZE=$((256 << 20))
truncate -s $SIZE /tmp/img/vfs.img /tmp/img/runner.img

new_disk() {  # new_disk WWN CONFIGFS_DEVICE: a tcm_loop LUN over it; prints the /dev/sdX it made
  local before t
  before=$(ls /sys/block | grep '^sd' || true)
  t=$LOOP/$1/tpgt_1
  mkdir -p "$t/lun/lun_0"
  echo "${1%?}f" > "$t/nexus"
  ln -s "$2" "$t/lun/lun_0/$(basename "$2")"
  wait_for 60 "[ \$(ls /sys/block | grep -c '^sd') -gt $(echo "$before" | grep -c sd) ]"
  local sd
  sd=$(ls /sys/block | grep '^sd' | grep -vxF "$before" | head -1)
  wait_for 30 "[ -b /dev/$sd ]"
  echo "/dev/$sd"
}
sg_of() { echo "/dev/$(ls "/sys/block/${1#/dev/}/device/scsi_generic")"; }

start_runner() {
  tcmu-runner -l /tmp/runner-log > /tmp/runner.out 2>&1 &
  RUNNER_PID=$!
  wait_for 30 "grep -q 'rbd is registered' /tmp/runner-log/tcmu-runner.log 2>/dev/null"
}
stop() { kill "$1" && wait "$1" || true; }

mkdir -p /tmp/runner-log
RUNNER=$(command -v tcmu-runner || true)  # without it, vfs and rd_mcp only
start_vfs
user_dev vfs0 file//tmp/img/vfs.img $SIZE
wait_for 30 "grep -q '^kernel_uio uio' $MNT/devices/vfs0/status"
OURS=$(new_disk naa.5001405000000010 $CORE/user_0/vfs0)
stop $VFS_PID
if [ -n "$RUNNER" ]; then
  start_runner
  user_dev runner0 qcow//tmp/img/runner.img $SIZE
  THEIRS=$(new_disk naa.5001405000000020 $CORE/user_0/runner0)
  stop $RUNNER_PID
fi
mkdir -p $CORE/rd_mcp_0/rd0
echo rd_pages=$((SIZE / 4096)) > $CORE/rd_mcp_0/rd0/control
echo 1 > $CORE/rd_mcp_0/rd0/enable
REF=$(new_disk naa.5001405000000030 $CORE/rd_mcp_0/rd0)

sample() {  # sample NAME DEV RW BS QD
  fio --name=b --filename="$2" --ioengine=libaio --direct=1 --rw="$3" --bs="$4" --iodepth="$5" \
      --size=128M --time_based --runtime="$RUNTIME" --randrepeat=0 --norandommap --output-format=json |
    "$PY" -c "import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; s=j['read'] if 'read' in '$3' else j['write']; print(json.dumps({'workload':'$3 $4 qd$5','target':'$1','iops':s['iops'],'mbps':s['bw_bytes']/1e6}))"
}
WORKLOADS=("randread 4k 1" "randwrite 4k 1" "randread 4k 16" "randwrite 4k 16" "read 1M 4" "write 1M 4")
for _ in $(seq "$RUNS"); do
  start_vfs
  for w in "${WORKLOADS[@]}"; do
    sample vfs "$OURS" $w
    sample rd_mcp "$REF" $w
  done
  [ "${CONFORMANCE:-0}" = 1 ] && CONF_TAG=CONF-vfs conformance "$(sg_of "$OURS")" SCSI
  stop $VFS_PID
  if [ -n "$RUNNER" ]; then
    start_runner
    for w in "${WORKLOADS[@]}"; do
      sample tcmu-runner "$THEIRS" $w
    done
    [ "${CONFORMANCE:-0}" = 1 ] && CONF_TAG=CONF-tcmu-runner conformance "$(sg_of "$THEIRS")" SCSI
    stop $RUNNER_PID
  fi
  CONFORMANCE=0  # once is enough: the outcome does not vary
done
