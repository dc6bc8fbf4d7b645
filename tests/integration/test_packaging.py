"""What ships beside the package: the systemd unit and the Vagrant lab are valid as their tools see them."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: tools/install-deps installs it")
    with open(os.path.join(ROOT, "systemd", "hapair.service")) as f:
        unit = f.read()
    # The unit names the installed path; point it at wherever this machine has hapair.
    exe = shutil.which("hapair") or os.path.join(os.path.dirname(sys.executable), "hapair")
    assert os.access(exe, os.X_OK), f"no hapair script at {exe}: is the package installed?"
    (tmp_path / "hapair.service").write_text(unit.replace("/usr/local/bin/hapair", exe))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "hapair.service")], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    # verify exits 0 even when it ignores a line it cannot parse: any word from it is a finding.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=hapair", "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "StateDirectory=hapair",
                   "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"):  # fmt: skip
        assert needed in unit


def test_vagrantfile_validates():
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is missing: tools/install-deps installs it")
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=os.path.join(ROOT, "vagrant"),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and "Vagrantfile validated successfully" in result.stdout, result.stdout + result.stderr
    for script in os.listdir(os.path.join(ROOT, "vagrant", "provision")):
        check = subprocess.run(["bash", "-n", os.path.join(ROOT, "vagrant", "provision", script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
