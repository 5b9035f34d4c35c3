"""`ray up cluster.yaml` run for real: SSH to a node, start Ray, `serve deploy`, `/health`, `ray down`.

Everything runs inside a PID, mount and network namespace of the test's own
(``unshare --pid --fork --mount-proc --net``): the ``ray stop`` that
cluster.yaml's start commands run sees only that namespace's processes (never
the test session's Ray), the node's ports (sshd on 22, Ray's GCS on 6380, the
dashboard on 8265, Serve on 8000) are the namespace's own loopback, and
``/root`` and ``/tmp/ray`` are a bind mount and a tmpfs there, so nothing of
the run is left on the machine.

Inside: a throw-away host key and user key, Debian's ``sshd`` on 127.0.0.1:22,
then the repository's cluster.yaml with only what a real launch file changes
per site: the node's address (127.0.0.1 as the head, no workers), the SSH
user and key, the settings file to copy, and a link to the test's virtual
environment instead of the two setup lines that create and install one (CI
installed it already). ``~/blatam.env`` holds the service settings the README tells
operators to put there (a SECRET_KEY of its own, the data folder). Then
exactly the README's steps: ``ray up -y``, ``serve deploy serve_config.yaml``
with the token, ``/health`` through the gateway, and ``ray down -y``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 1200

# Runs as root inside the namespaces; $1 is the test's folder, $VENV the virtual environment.
NODE_SCRIPT = r"""
set -euo pipefail
work="$1"
ip link set lo up
mkdir -p /tmp/ray /run/sshd "$work/home/.ssh" "$work/home/.ray" "$work/data"
mount -t tmpfs tmpfs /tmp/ray
# A user of the namespace only (uid 0, its home in the test's folder): what ray up writes to ~ stays there.
cp /etc/passwd "$work/passwd"
echo "rayup:x:0:0:ray up test:$work/home:/bin/bash" >> "$work/passwd"
cp /etc/shadow "$work/shadow"
echo "rayup:*:19000:0:99999:7:::" >> "$work/shadow"
mount --bind "$work/passwd" /etc/passwd
mount --bind "$work/shadow" /etc/shadow
export HOME="$work/home"
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
cp "$work/user_key.pub" "$HOME/.ssh/authorized_keys"
chmod 700 "$HOME/.ssh"
chmod 600 "$HOME/.ssh/authorized_keys"
printf '%s\n' "ListenAddress 127.0.0.1" "Port 22" "HostKey $work/host_key" "PidFile $work/sshd.pid" \
  "PermitRootLogin prohibit-password" "AllowUsers rayup" "PasswordAuthentication no" "UsePAM no" "StrictModes no" > "$work/sshd_config"
/usr/sbin/sshd -f "$work/sshd_config" -E "$work/sshd.log"
"$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$HOME/.ray/auth_token"
chmod 600 "$HOME/.ray/auth_token"
secret=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(48))')
printf 'SECRET_KEY=%s\nBLATAM_DATA_DIR=%s\n' "$secret" "$work/data" > "$work/blatam.env"
cd "$work/repo"
echo "== ray up"
timeout 600 "$VENV/bin/ray" up -y --no-config-cache "$work/cluster.yaml"
echo "== serve deploy"
cd "$HOME/blatam"
RAY_AUTH_MODE=token timeout 300 "$VENV/bin/serve" deploy serve_config.yaml -a http://127.0.0.1:8265
echo "== health"
for _ in $(seq 1 200); do
  if answer=$(curl -fsS --max-time 5 http://127.0.0.1:8000/health 2>/dev/null); then
    echo "$answer"
    break
  fi
  sleep 2
done
RAY_AUTH_MODE=token "$VENV/bin/serve" status -a http://127.0.0.1:8265 || true
echo "== ray down"
cd "$work/repo"
timeout 300 "$VENV/bin/ray" down -y "$work/cluster.yaml"
sleep 2
if pgrep -f raylet >/dev/null; then
  echo "raylet still running after ray down"
  exit 1
fi
echo "== done"
"""


def _namespaces_allowed() -> bool:
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "true"], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _launch_file(work: Path, venv: Path) -> Path:
    """The repository's cluster.yaml with a site's own values: this node, this key, this environment."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["max_workers"] = 0
    config["auth"] = {"ssh_user": "rayup", "ssh_private_key": str(work / "user_key")}
    config["file_mounts"]["~/blatam.env"] = str(work / "blatam.env")
    # The file's own setup but the two lines that create and install the venv: CI did that already.
    config["setup_commands"] = [f"ln -sfn {venv} ~/blatam-venv"] + [
        line for line in config["setup_commands"] if "pip install" not in line and "-m venv" not in line]
    path = work / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_ray_up_then_serve_deploy_then_health_then_ray_down(tmp_path: Path) -> None:
    if not (BIN / "ray").exists() or not (BIN / "serve").exists():
        pytest.skip("not run from a virtual environment with Ray's CLIs")
    if os.geteuid() != 0 or shutil.which("unshare") is None or not _namespaces_allowed():
        pytest.skip("PID/network namespaces are not allowed here (unshare --pid --net failed): ray up not tried")
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("openssh-server is missing (.ci/run installs it)")
    venv = BIN.parent
    (tmp_path / "home").mkdir()
    (tmp_path / "repo").symlink_to(ROOT)
    _launch_file(tmp_path, venv)
    script = tmp_path / "node.sh"
    script.write_text(NODE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["VENV"] = str(venv)
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "bash", str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    out = done.stdout + done.stderr
    print(out[-12000:])
    assert done.returncode == 0, out[-8000:]
    health = out.split("== health", 1)[1].split("== ray down", 1)[0]
    assert '"status":"healthy"' in health.replace(" ", ""), health[-3000:]
    assert "== done" in out
