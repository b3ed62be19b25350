# The bench's kernel group, in the test VM (tests/vm/vm.py): fio through the kernel's sd on a
# tcm_loop LUN, alternating a vfs device (the daemon as TCMU userspace) and the in-kernel rd_mcp
# ramdisk (the ceiling), RUNS rounds of each workload; one JSON line per sample.
. "$REPO/tests/vm/guest.sh"
start_vfs
OURS=$(disk vfs0 ram/ $((256 << 20)))
mkdir -p $CORE/rd_mcp_0/rd0
echo rd_pages=65536 > $CORE/rd_mcp_0/rd0/control
echo 1 > $CORE/rd_mcp_0/rd0/enable
t=$LOOP/naa.5001405000000011/tpgt_1
mkdir -p $t/lun/lun_0
echo naa.5001405000000012 > $t/nexus
ln -s $CORE/rd_mcp_0/rd0 $t/lun/lun_0/rd0
wait_for 60 "[ \$(ls -d /sys/block/sd* | wc -l) -ge 2 ]"
REF=/dev/$(basename "$(ls -d /sys/block/sd* | grep -v "${OURS#/dev/}" | head -1)")
wait_for 30 "[ -b $REF ]"
sample() {  # sample NAME DEV RW BS QD
  fio --name=b --filename="$2" --ioengine=libaio --direct=1 --rw="$3" --bs="$4" --iodepth="$5" \
      --size=128M --time_based --runtime="$RUNTIME" --randrepeat=0 --norandommap --output-format=json |
    "$PY" -c "import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; s=j['read'] if 'read' in '$3' else j['write']; print(json.dumps({'workload':'$3 $4 qd$5','target':'$1','iops':s['iops'],'mbps':s['bw_bytes']/1e6}))"
}
for w in "randread 4k 1" "randread 4k 16" "randwrite 4k 16" "read 1M 4" "write 1M 4"; do
  for _ in $(seq "$RUNS"); do
    sample vfs "$OURS" $w
    sample rd_mcp "$REF" $w
  done
done
