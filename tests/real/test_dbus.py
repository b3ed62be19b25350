"""org.kernel.TCMUService1 on a real dbus-daemon (a private system-like bus, with the policy
file setup-debian installs), called by dbus-send and by targetcli's own discovery code."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Mount, run, vfs_scsi, wait_for

DEST = "--dest=org.kernel.TCMUService1"
ROOT = "/org/kernel/TCMUService1"
# targetcli-fb's UIBackstores._user_backstores and ui_command_create's check, as it runs them
TARGETCLI = """
import sys
from gi.repository import Gio
from targetcli.ui_backstore import UIBackstores
found = {name: (iface, props) for name, iface, props in UIBackstores._user_backstores(None)}
for name in sorted(found):
    print("handler", name, found[name][1]["org.kernel.TCMUService1"]["ConfigDesc"])
for cfg in sys.argv[2:]:
    ok, why = found[sys.argv[1]][0].CheckConfig("(s)", cfg)
    print("check", cfg, ok, why)
"""


@pytest.fixture
def system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed (./setup-debian --test installs it)")
    if os.geteuid() != 0:
        pytest.skip("the bus policy lets root own org.kernel.TCMUService1, as tcmu-runner's does")
    socket = tmp_path / "system_bus_socket"
    conf = tmp_path / "bus.conf"
    conf.write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_destination="org.freedesktop.DBus"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
  <include>{REPO}/mountscripts/vfs-tcmu.dbus.conf</include>
</busconfig>
""")
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"])
    try:
        wait_for(socket.exists)
        address = f"unix:path={socket}"
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
    finally:
        bus.terminate()
        bus.wait(10)


@pytest.fixture
def served(tmp_path: Path, system_bus: str, mounts: list[Mount]) -> Mount:
    m = Mount(tmp_path, extra=("--image-dir", str(tmp_path / "images")))
    (tmp_path / "images").mkdir()
    mounts.append(m.start())
    wait_for(lambda: "on" in m.p("mgmt", "tcmu", "keys", "dbus").read_text())
    return m


def send(*args: str) -> subprocess.CompletedProcess[str]:
    return run("dbus-send --system --print-reply " + " ".join(args))


def test_handlers_are_listed_with_their_config_description(served: Mount) -> None:
    r = send(DEST, ROOT, "org.freedesktop.DBus.ObjectManager.GetManagedObjects")
    assert r.returncode == 0, r.stderr
    assert f'object path "{ROOT}/file"' in r.stdout and f'object path "{ROOT}/ram"' in r.stdout
    assert "ConfigDesc" in r.stdout and "inside an --image-dir" in r.stdout
    r = send(
        DEST,
        f"{ROOT}/ram",
        "org.freedesktop.DBus.Properties.Get",
        "string:org.kernel.TCMUService1",
        "string:ConfigDesc",
    )
    assert r.returncode == 0 and "lost when the daemon stops" in r.stdout, r.stdout + r.stderr
    r = send(DEST, ROOT, "org.freedesktop.DBus.Introspectable.Introspect")
    assert '<node name="file"/>' in r.stdout and "GetManagedObjects" in r.stdout
    manager = f"{ROOT}/HandlerManager1 org.kernel.TCMUService1.HandlerManager1.RegisterHandler"
    r = send(DEST, manager, "string:mine", "string:mine/path")
    assert "boolean false" in r.stdout and "handlers/load" in r.stdout, r.stdout + r.stderr


def test_check_config_answers_with_the_handlers_reason(served: Mount, tmp_path: Path) -> None:
    good = send(
        DEST, f"{ROOT}/file", "org.kernel.TCMUService1.CheckConfig", f"string:file/{tmp_path}/images/a.img"
    )
    assert "boolean true" in good.stdout and '"success"' in good.stdout, good.stdout + good.stderr
    bad = send(DEST, f"{ROOT}/file", "org.kernel.TCMUService1.CheckConfig", "string:file//etc/shadow")
    assert "boolean false" in bad.stdout and "outside the image dirs" in bad.stdout, bad.stdout
    other = send(DEST, f"{ROOT}/file", "org.kernel.TCMUService1.CheckConfig", "string:ram/")
    assert "boolean false" in other.stdout and "not a file config" in other.stdout
    wrong = send(DEST, f"{ROOT}/file", "org.kernel.TCMUService1.CheckConfig", "int32:3")
    assert wrong.returncode != 0 and "InvalidArgs" in wrong.stderr
    none = send(DEST, f"{ROOT}/nosuch", "org.kernel.TCMUService1.CheckConfig", "string:x/")
    assert none.returncode != 0 and "UnknownObject" in none.stderr
    assert served.proc is not None and served.proc.poll() is None


def test_targetcli_discovers_and_checks_as_it_does_with_tcmu_runner(served: Mount, tmp_path: Path) -> None:
    python = "/usr/bin/python3"
    probe = run(f"{python} -c 'import targetcli.ui_backstore, gi'")
    if probe.returncode != 0:
        pytest.skip(f"targetcli-fb with python3-gi is not installed: {probe.stderr.strip()[-200:]}")
    r = subprocess.run(
        [python, "-c", TARGETCLI, "file", f"file/{tmp_path}/images/t.img", "file//etc/shadow"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "handler file file/<path to an image inside an --image-dir>" in r.stdout
    assert "handler ram ram/" in r.stdout
    assert f"check file/{tmp_path}/images/t.img True success" in r.stdout
    assert "check file//etc/shadow False" in r.stdout


def test_change_medium_swaps_image_and_size_live(served: Mount, tmp_path: Path) -> None:
    r = served.sh(
        f"mkdir devices/d && echo file/{tmp_path}/images/one.img > devices/d/config && "
        "echo 1048576 > devices/d/size && echo 1 > devices/d/enable && "
        "printf one | dd of=devices/d/data conv=notrunc status=none"
    )
    assert r.returncode == 0, r.stderr
    (tmp_path / "images" / "two.img").write_bytes(b"two" + bytes(4093))
    r = send(
        DEST,
        f"{ROOT}/file",
        "org.kernel.TCMUService1.ChangeMedium",
        "string:d",
        "uint64:2097152",
        f"string:file/{tmp_path}/images/two.img",
    )
    assert "int32 0" in r.stdout, r.stdout + r.stderr
    assert served.p("devices", "d", "config").read_text().strip() == f"file/{tmp_path}/images/two.img"
    assert served.p("devices", "d", "size").read_text().strip() == "2097152"
    assert served.p("devices", "d", "data").read_bytes()[:3] == b"two"
    ua = vfs_scsi(served, "d", "tur")
    assert ua["sense"]["key"] == "UNIT ATTENTION" and ua["sense"]["asc"] == "2a", ua
    # a size no file can have passes the check and fails the open: the old medium stays
    r = send(
        DEST,
        f"{ROOT}/file",
        "org.kernel.TCMUService1.ChangeMedium",
        "string:d",
        f"uint64:{2**64 - 512}",
        f"string:file/{tmp_path}/images/three.img",
    )
    assert "int32 -27" in r.stdout and "three.img" in r.stdout, r.stdout
    assert served.p("devices", "d", "config").read_text().strip() == f"file/{tmp_path}/images/two.img"
    assert served.p("devices", "d", "data").read_bytes()[:3] == b"two"
    r = send(
        DEST,
        f"{ROOT}/file",
        "org.kernel.TCMUService1.ChangeMedium",
        "string:nosuch",
        "uint64:512",
        "string:file/x",
    )
    assert "int32 -2" in r.stdout and "no device nosuch" in r.stdout


def test_a_second_daemon_leaves_the_name_to_the_first(
    served: Mount, tmp_path: Path, mounts: list[Mount]
) -> None:
    second = Mount(tmp_path, name="two")
    mounts.append(second.start())
    wait_for(lambda: "off" in second.p("mgmt", "tcmu", "keys", "dbus").read_text())
    assert "owned by another" in second.p("mgmt", "tcmu", "keys", "dbus").read_text()
    assert "on" == served.p("mgmt", "tcmu", "keys", "dbus").read_text().strip()
