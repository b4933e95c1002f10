"""Nothing phones home: the service, one /predict and the training stack in an empty network namespace.

``tests/offline_probe.py`` runs under ``strace -f`` inside ``unshare -n`` (root, as CI is) with only
loopback up. Every ``connect``/``sendto`` it or its children make is logged; any address that is not
loopback, and any DNS packet (port 53) wherever it goes, fails the test. onnxruntime 1.32's
telemetry used to appear here as connects to the resolver about 20 s after the first session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.launcher import REPO_ROOT

pytestmark = pytest.mark.slow

_ADDRESS = re.compile(
    r"sa_family=(?P<family>AF_INET6?),\s*sin6?_port=htons\((?P<port>\d+)\).*?"
    r"(?:inet_addr\(\"(?P<v4>[^\"]+)\"\)|inet_pton\(AF_INET6,\s*\"(?P<v6>[^\"]+)\")"
)


def outside_contacts(trace: str) -> list[str]:
    """Trace lines that reach past loopback: a non-loopback IPv4/IPv6 peer, or any DNS port."""
    leaks = []
    for line in trace.splitlines():
        match = _ADDRESS.search(line)
        if not match:
            continue
        address = match["v4"] or match["v6"] or ""
        loopback = address.startswith("127.") or address in ("::1", "::") or address.startswith("::ffff:127.")
        if not loopback or match["port"] == "53":
            leaks.append(line.strip())
    return leaks


def test_outside_contacts_parses_strace_lines() -> None:
    lines = "\n".join(
        [
            '9 connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = -1',
            '9 connect(8, {sa_family=AF_INET, sin_port=htons(8000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            "9 connect(8, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = -1',
            "9 connect(8, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '9 sendto(5, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 1',
            '9 connect(8, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        ]
    )
    leaks = outside_contacts(lines)
    assert len(leaks) == 3
    assert "10.255.255.53" in leaks[0] and "2001:db8::1" in leaks[1] and "127.0.0.53" in leaks[2]


def _can_isolate() -> str | None:
    if os.geteuid() != 0:
        return "needs root for unshare -n (CI runs as root)"
    for tool in ("unshare", "strace", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@pytest.mark.timeout(400)
def test_service_and_training_stack_contact_nothing_outside(tmp_path: Path) -> None:
    reason = _can_isolate()
    if reason:
        pytest.skip(reason)
    trace = tmp_path / "connect.trace"
    probe = f"{sys.executable} -m tests.offline_probe --work {tmp_path / 'work'} --linger 30"
    command = f"ip link set lo up && exec strace -f -qq -e trace=connect,sendto,sendmsg -o {trace} {probe}"
    # The environment as a user would have it: the variable is not pre-set, the packages set it.
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    result = subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert result.returncode == 0, f"probe failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    assert "predict: 200" in result.stdout
    text = trace.read_text()
    assert "127.0.0.1" in text, "the trace should show the loopback connects of the probe itself"
    leaks = outside_contacts(text)
    assert not leaks, "contacts beyond loopback:\n" + "\n".join(leaks[:20])
