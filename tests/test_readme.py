"""The README's promise: its first command runs the app, its second runs the tests.

A fresh-clone checker reads the first two fenced blocks of README.md, so their shape is tested here,
and the first one is started for real (slow) to see the web app and the simulator answer.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

# Settings that would point the demo at shared services or keys; the demo must run on its own data.
SERVICE_SETTINGS = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "FIELD_ENCRYPTION_KEYS",
    "FIELD_ENCRYPTION_KEYS_FILE",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "HTTPS_ONLY",
    "BEHIND_TLS_PROXY",
    "CLAZAR_API_BASES",
)


def fenced_blocks(text: str) -> list[str]:
    return [match.group(1).strip() for match in FENCE.finditer(text)]


def test_the_readme_starts_with_the_demo_command_then_the_test_command():
    text = (ROOT / "README.md").read_text()
    blocks = fenced_blocks(text)

    assert blocks[:2] == ["./scripts/demo", "./scripts/test"]
    before_first = text[: text.index("```")].strip().splitlines()
    assert len(before_first) <= 3, "only a title and one sentence may come before the first command"


def test_the_readme_commands_are_executable_scripts():
    for name in ("demo", "test"):
        script = ROOT / "scripts" / name
        assert script.is_file(), f"{script} is missing"
        assert os.access(script, os.X_OK), f"{script} is not executable (chmod +x)"


def test_ci_runs_the_suite_through_scripts_test():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    code = [line for line in lines if not line.lstrip().startswith("#")]

    assert any(re.search(r"(^|\s|/)scripts/test(\s|$)", line) for line in code)
    assert sum("scripts/test" in line for line in code) >= 2, (
        "the suite runs on PostgreSQL/Redis and on the embedded default"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, str, str]:
    """GET following redirects: (status, final url, body)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.geturl(), response.read().decode("utf-8", "replace")


def wait_for_get(url: str, deadline: float, proc: subprocess.Popen[str], output: list[str]):
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"scripts/demo exited ({proc.returncode}) early:\n" + "".join(output[-80:]))
        try:
            return get(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = exc
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer: {last_error}\n" + "".join(output[-80:]))


def stop_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@pytest.mark.slow
def test_the_demo_command_serves_the_login_page_and_the_simulator(tmp_path):
    web_port, sim_port, sf_sim_port = free_port(), free_port(), free_port()
    while len({web_port, sim_port, sf_sim_port}) < 3:
        sim_port, sf_sim_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_SETTINGS}
    env.update(
        PORT=str(web_port),
        SIM_PORT=str(sim_port),
        SF_SIM_PORT=str(sf_sim_port),
        CLAZAR_DATA_DIR=str(tmp_path / "data"),
    )

    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "demo")],
        cwd=tmp_path,  # the script must find the repository from its own location
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        banner = re.compile(r"clazar-dest is running at (http://127\.0\.0\.1:(\d+)/)")
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = [m for line in list(output) if (m := banner.search(line))]
            url = found[0] if found else None
            time.sleep(0.2)
        assert url is not None, "no 'clazar-dest is running at' line:\n" + "".join(output[-80:])
        assert url.group(2) == str(web_port)

        deadline = time.monotonic() + 90
        status, final_url, body = wait_for_get(url.group(1), deadline, proc, output)
        assert status == 200
        assert 'type="password"' in body, f"{final_url} is not a login page"

        status, _, _ = wait_for_get(f"http://127.0.0.1:{sim_port}/__sim/health", deadline, proc, output)
        assert status == 200
        status, _, _ = wait_for_get(f"http://127.0.0.1:{sf_sim_port}/__sim/health", deadline, proc, output)
        assert status == 200
    finally:
        stop_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
            with socket.socket() as sock:
                web_outlived = sock.connect_ex(("127.0.0.1", web_port)) == 0
        except subprocess.TimeoutExpired:
            stop_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail("scripts/demo did not stop within 30 s of SIGTERM")
        finally:
            # honcho starts each process in a session of its own: make sure none outlives the test.
            for pid in re.findall(r"started \(pid=(\d+)\)", "".join(output)):
                stop_group(int(pid), signal.SIGKILL)

    assert proc.returncode is not None
    assert not web_outlived, "the web server kept running after scripts/demo stopped"
