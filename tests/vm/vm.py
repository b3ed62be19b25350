"""A real kernel for tests: Debian's own (every TCMU module built) booted by qemu with the host's
root shared read-only over 9p, one bash script run as root inside, its output and status back.

Under TCG (KVM cannot run a stock kernel on these machines), booting takes ~2.5 s: qemu starts
the ELF vmlinux through its PVH note (no in-guest decompression), and a small initramfs (static
busybox, the 9p/virtio/overlay/configfs modules) mounts the host's root, gives the guest
writable /tmp, /run, /etc, /var and /root, and runs the script on the virtio console.
`python -m tests.vm.vm 'uname -r'` runs a command by hand.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("VFS_VM_CACHE", "/var/tmp/vfs-vm"))
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_console", "overlay", "configfs")
PACKAGES = "qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils kmod"

INIT = r"""#!/bin/sh
export PATH=/bin
bb=busybox
$bb mount -t proc proc /proc; $bb mount -t sysfs sys /sys; $bb mount -t devtmpfs dev /dev
die() { echo "vm init: $*"; $bb sleep 1; echo o > /proc/sysrq-trigger; }
for m in $($bb cat /mods/order); do $bb insmod /mods/$m || die "insmod $m"; done
o=trans=virtio,version=9p2000.L,msize=512000
N=/newroot
$bb mount -t 9p -o $o,ro,cache=loose root $N || die "the host's root"
$bb mount -t tmpfs -o mode=755 run $N/run
$bb mkdir -p $N/run/vm && $bb mount -t 9p -o $o job $N/run/vm || die "the job dir"
$bb mount -t tmpfs -o mode=1777 tmp $N/tmp
for d in etc var root; do
  $bb mkdir -p $N/run/.ovl/$d/u $N/run/.ovl/$d/w
  $bb mount -t overlay -o lowerdir=$N/$d,upperdir=$N/run/.ovl/$d/u,workdir=$N/run/.ovl/$d/w ovl-$d $N/$d || die "overlay $d"
done
if [ -f $N/run/vm/shares ]; then  # host dirs the root mount does not show (under /tmp, say)
  while read -r tag path; do
    $bb mkdir -p "$N$path"; $bb mount -t 9p -o $o,ro "$tag" "$N$path" || die "share $path"
  done < $N/run/vm/shares
fi
$bb mount --move /proc $N/proc; $bb mount --move /sys $N/sys; $bb mount --move /dev $N/dev
$bb mkdir -p $N/dev/pts $N/dev/shm
$bb mount -t devpts devpts $N/dev/pts; $bb mount -t tmpfs -o mode=1777 shm $N/dev/shm
$bb mount -t configfs configfs $N/sys/kernel/config
$bb ip link set lo up; $bb hostname vm
exec $bb switch_root $N /bin/bash /run/vm/stage2.sh
"""

STAGE2 = """#!/bin/bash
: > /run/vm/up
. /run/vm/env.sh
exec </dev/null >/dev/hvc0 2>&1
stty -onlcr -echo <&1
bash /run/vm/cmd.sh
echo $? > /run/vm/rc
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


# A boot takes seconds; one that has not reached stage2 by then is stuck (seen once in a full
# suite under load: 900 s of nothing on either console), and is booted again, once.
BOOT_LIMIT = 120


class VmUnavailableError(Exception):
    """This machine cannot boot the test VM: why (a test skips with it)."""


@dataclass
class Result:
    rc: int
    output: str
    console: str


def kernel_version() -> str:
    found = [p[len("/boot/vmlinuz-") :] for p in glob.glob("/boot/vmlinuz-*")]
    found = [v for v in found if Path(f"/lib/modules/{v}").is_dir()]
    if not found:
        raise VmUnavailableError(f"no kernel with its modules in /boot (Debian: {PACKAGES})")
    return sorted(
        found, key=lambda v: [int(x) if x.isdigit() else x for x in v.replace("-", ".").split(".")]
    )[-1]


def check_tools() -> None:
    missing = [
        t for t in ("qemu-system-x86_64", "busybox", "cpio", "xz", "modprobe") if shutil.which(t) is None
    ]
    if missing:
        raise VmUnavailableError(f"missing {', '.join(missing)} (Debian: {PACKAGES})")


def _vmlinux(kver: str, out: Path) -> None:
    """The ELF inside Debian's bzImage (xz-compressed): qemu boots it by its PVH note."""
    image = Path(f"/boot/vmlinuz-{kver}").read_bytes()
    at = image.find(b"\xfd7zXZ\x00")
    if at < 0:
        raise VmUnavailableError(f"/boot/vmlinuz-{kver} holds no xz stream")
    elf = subprocess.run(["xz", "-dc", "--single-stream"], input=image[at:], capture_output=True).stdout
    if elf[:4] != b"\x7fELF":
        raise VmUnavailableError("no ELF vmlinux in the kernel image")
    out.write_bytes(elf)


def _initramfs(kver: str, out: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox is not None
    if subprocess.run(["ldd", busybox], capture_output=True).returncode == 0:
        raise VmUnavailableError("busybox is not static (Debian: busybox-static)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "newroot", "mods"):
            (root / d).mkdir()
        shutil.copy(busybox, root / "bin/busybox")
        (root / "bin/sh").symlink_to("busybox")
        order: list[str] = []
        for module in MODULES:
            deps = subprocess.run(
                ["modprobe", "-S", kver, "--show-depends", module], capture_output=True, text=True
            )
            for line in deps.stdout.splitlines():
                parts = line.split()
                if len(parts) < 2 or parts[0] != "insmod":
                    continue
                ko = parts[1]
                name = Path(ko).name.removesuffix(".zst").removesuffix(".xz")
                if name in order:
                    continue
                tool = (
                    ["zstd", "-dcq"]
                    if ko.endswith(".zst")
                    else ["xz", "-dc"]
                    if ko.endswith(".xz")
                    else ["cat"]
                )
                (root / "mods" / name).write_bytes(
                    subprocess.run([*tool, ko], capture_output=True, check=True).stdout
                )
                order.append(name)
        (root / "mods/order").write_text("\n".join(order) + "\n")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, capture_output=True, check=True
        )
        out.write_bytes(
            subprocess.run(["gzip", "-1"], input=archive.stdout, capture_output=True, check=True).stdout
        )


def artefacts() -> tuple[Path, Path]:
    """(vmlinux, initramfs), built once per kernel and init script."""
    check_tools()
    kver = kernel_version()
    key = hashlib.md5(f"{kver}\n{INIT}\n{MODULES}".encode()).hexdigest()[:12]
    where = CACHE / f"{kver}-{key}"
    if not (where / "initramfs.cpio.gz").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(dir=CACHE, prefix=".build-"))
        _vmlinux(kver, build / "vmlinux")
        _initramfs(kver, build / "initramfs.cpio.gz")
        shutil.rmtree(where, ignore_errors=True)
        build.rename(where)
    return where / "vmlinux", where / "initramfs.cpio.gz"


def run(script: str, timeout: float = 600, mem: str = "2G", smp: int = 2, cwd: str | None = None) -> Result:
    """Run `script` (bash) as root in a fresh VM; its status and output. `cwd` (the checkout)
    is shared read-only at its own path: under /tmp the guest would see its own tmpfs."""
    vmlinux, initramfs = artefacts()
    with tempfile.TemporaryDirectory(prefix="vfs-vm-") as tmp:
        job = Path(tmp)
        (job / "cmd.sh").write_text(script)
        (job / "env.sh").write_text(
            f"export PATH={os.environ.get('PATH', '/usr/bin:/bin')!r}\n"
            "export HOME=/root TERM=dumb NO_COLOR=1 LANG=C.UTF-8 VM_JOB=/run/vm PYTHONDONTWRITEBYTECODE=1\n"
            f"cd {cwd or os.getcwd()!r} 2>/dev/null || cd /\n"
        )
        (job / "stage2.sh").write_text(STAGE2)
        shares = [os.path.realpath(cwd)] if cwd else []
        (job / "shares").write_text("".join(f"share{i} {path}\n" for i, path in enumerate(shares)))
        argv = [
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", str(smp), "-m", mem,
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{job}/console.log",
            "-device", "virtio-serial-pci", "-chardev", "stdio,id=out,signal=off",
            "-device", "virtconsole,chardev=out",
            "-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={job},mount_tag=job,security_model=none",
            *[arg for i, path in enumerate(shares)
              for arg in ("-virtfs", f"local,path={path},mount_tag=share{i},security_model=none,readonly=on")],
            "-kernel", str(vmlinux), "-initrd", str(initramfs),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=4",
        ]  # fmt: skip
        for attempt in (1, 2):
            output, alive = _serve(argv, job, timeout)
            if alive or attempt == 2:
                break
            output += f"\n[vm: no sign of life after {BOOT_LIMIT} s; booting again]\n"
            print(output, file=sys.stderr)  # pytest shows it with the test's result
        console = (job / "console.log").read_text(errors="replace") if (job / "console.log").exists() else ""
        rc_file = job / "rc"
        rc = int(rc_file.read_text()) if rc_file.exists() and rc_file.read_text().strip() else 125
        return Result(rc, output, console)


def _serve(argv: list[str], job: Path, timeout: float) -> tuple[str, bool]:
    """One boot: its console output, and False where it never reached stage2 in BOOT_LIMIT."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    start = time.monotonic()
    try:
        while True:
            try:
                out, _ = proc.communicate(timeout=1)  # a retry after a timeout loses no output
                return out.decode(errors="replace"), True
            except subprocess.TimeoutExpired:
                waited = time.monotonic() - start
                stuck = waited > BOOT_LIMIT and not (job / "up").exists()
                if stuck or waited > timeout:
                    break
    finally:
        if proc.poll() is None:  # stuck, out of time, or the test interrupted: no VM left behind
            os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    text = out.decode(errors="replace")
    return (text, False) if stuck else (text + f"\n[vm: timed out after {timeout} s]", True)


if __name__ == "__main__":
    result = run(" ".join(sys.argv[1:]) or "uname -r")
    print(result.output, end="")
    if result.rc == 125:
        print(result.console[-3000:], file=sys.stderr)
    raise SystemExit(result.rc)
