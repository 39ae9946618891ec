"""nginx: the compose config and the config deploy/local/cluster.sh generates pass
`nginx -t` with Debian's nginx; retries stay on idempotent requests (plus POST
/generate, idempotent by key); and, through a real nginx started by cluster.sh in
front of echo backends, request ids pass through, bodies over 16 MiB get 413 and a
POST /generate survives a dead replica."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import deploylib as L

NGINX_DIR = L.DEPLOY / "nginx"
CLUSTER_SH = L.DEPLOY / "local" / "cluster.sh"
ECHO = Path(__file__).resolve().parent / "echo_backend.py"


def nginx_bin():
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    assert found, "nginx is not installed (deploy/validate.sh installs Debian's nginx)"
    return found


def nginx_t(conf: Path, wrapper=()):
    result = subprocess.run([*wrapper, nginx_bin(), "-t", "-q", "-c", str(conf)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def upstream_hosts():
    text = (NGINX_DIR / "upstream-compose.conf").read_text()
    return sorted(set(re.findall(r"^\s*server\s+([\w.-]+):\d+", text, re.M)))


def test_compose_config_passes_nginx_t(tmp_path):
    """The compose nginx.conf, unchanged. Its upstream names (api-1, api-2) only resolve
    inside the compose network, so nginx -t runs in a private mount namespace whose
    /etc/hosts maps them to 127.0.0.1; without unshare (not root), the same config is
    checked in a copy where the names are replaced by 127.0.0.1."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost " + " ".join(upstream_hosts()) + "\n")
    conf = NGINX_DIR / "nginx.conf"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode == 0:
        script = f'mount --bind "{hosts}" /etc/hosts && exec "$@"'
        nginx_t(conf, wrapper=("unshare", "-m", "sh", "-c", script, "sh"))
    else:
        copy = tmp_path / "nginx"
        shutil.copytree(NGINX_DIR, copy)
        up = copy / "upstream-compose.conf"
        text = up.read_text()
        for host in upstream_hosts():
            text = re.sub(rf"\b{re.escape(host)}:", "127.0.0.1:", text)
        up.write_text(text)
        nginx_t(copy / "nginx.conf")


def test_local_cluster_config_passes_nginx_t(tmp_path):
    env = dict(os.environ, CLUSTER_DIR=str(tmp_path / "cluster"))
    conf = subprocess.run(["bash", str(CLUSTER_SH), "nginx-config"], env=env, check=True,
                          capture_output=True, text=True).stdout
    (tmp_path / "nginx.conf").write_text(conf)
    assert "server 127.0.0.1:" in conf
    nginx_t(tmp_path / "nginx.conf")


def location_blocks(text):
    """location header -> body, for the flat (non-nested) locations of a server."""
    return {m.group(1).strip(): m.group(2)
            for m in re.finditer(r"^location\s+([^{]+)\{(.*?)^\}", text, re.M | re.S)}


def test_only_post_generate_is_retried_when_not_idempotent():
    text = (NGINX_DIR / "artefatos-server.conf").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    blocks = location_blocks(code)
    with_non_idempotent = [loc for loc, body in blocks.items() if "non_idempotent" in body]
    assert with_non_idempotent == ["= /generate"]
    outside = code
    for body in blocks.values():
        outside = outside.replace(body, "")
    assert "non_idempotent" not in outside
    assert re.search(r"^proxy_next_upstream\s+error\s+timeout;", code, re.M)
    assert "http_503" not in code and "http_500" not in code
    assert re.search(r"^proxy_set_header X-Request-Id \$artefatos_request_id;", code, re.M)


def free_port_block(n=20):
    """A base port with n free ports after it."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.fail("no block of free ports")


def request(port, method, path, body=None, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def cluster(tmp_path):
    base = free_port_block()
    env = dict(os.environ, ARTEFATOS_BIN=str(ECHO), CLUSTER_DIR=str(tmp_path / "cluster"),
               ECHO_FAULT_DIR=str(tmp_path),
               CLUSTER_PORT=str(base), CLUSTER_READY_TIMEOUT="20", CLUSTER_STOP_TIMEOUT="10",
               NGINX=nginx_bin())

    def run(*args):
        return subprocess.run(["bash", str(CLUSTER_SH), *args], env=env, capture_output=True,
                              text=True, timeout=60)

    started = run("start")
    assert started.returncode == 0, started.stderr
    yield base, run, tmp_path
    stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr


def pid(tmp, name):
    return int((tmp / "cluster" / f"{name}.pid").read_text())


def test_cluster_sh_and_nginx_behaviour(cluster):
    port, run, tmp = cluster
    assert run("status").stdout.count("alive") == 6

    # Round robin over both API processes, never to a worker.
    seen = {json.loads(request(port, "GET", "/status/x")[2])["listen"] for _ in range(6)}
    assert seen == {f"127.0.0.1:{port + 1}", f"127.0.0.1:{port + 2}"}

    # The client's request id reaches the API and comes back; without one, nginx mints one.
    status, headers, body = request(port, "GET", "/status/x", headers={"X-Request-Id": "req-42"})
    assert status == 200 and json.loads(body)["request_id"] == "req-42"
    assert headers.get_all("X-Request-Id") == ["req-42"], "one X-Request-Id, not nginx's and the API's"
    status, headers, body = request(port, "GET", "/status/x")
    minted = json.loads(body)["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", minted) and headers["X-Request-Id"] == minted

    # 16 MiB passes, one byte more is refused by nginx before any replica sees it.
    limit = 16 * 1024 * 1024
    status, _, body = request(port, "POST", "/generate", body=b"x" * limit)
    assert status == 200 and json.loads(body)["body_len"] == limit
    status, _, _ = request(port, "POST", "/generate", body=b"x" * (limit + 1))
    assert status == 413

    # Operator endpoints are open to loopback.
    assert request(port, "GET", "/metrics")[0] == 200

    # api-1 takes requests and drops them unanswered (dies after the request was sent).
    # POST /generate is retried on api-2 (non_idempotent: safe, idempotent by key) ...
    api1 = port + 1
    (tmp / f"drop-{api1}").touch()
    generate = [request(port, "POST", "/generate", body=b"{}")[0] for _ in range(4)]
    assert generate == [200] * 4
    dropped = (tmp / f"drop-{api1}.log").read_text().splitlines()
    assert "POST /generate" in dropped, "no /generate reached api-1: the retry was not exercised"
    # ... but any other POST that reached api-1 is not replayed: the client gets 502.
    others = []
    while 502 not in others and len(others) < 4:
        others.append(request(port, "POST", "/keys", body=b"{}")[0])
    assert 502 in others
    (tmp / f"drop-{api1}").unlink()
    # nginx left api-1 out (max_fails); wait until it routes there again.
    deadline = time.monotonic() + 15
    while request(port, "GET", "/health/ready")[1].get("X-Upstream-Addr") != f"127.0.0.1:{api1}":
        assert time.monotonic() < deadline, "nginx never took api-1 back"
        time.sleep(0.1)

    # api-2 is killed outright (connection refused: nothing was sent, so nginx moves
    # on for every method); api-1 is back in rotation after fail_timeout or at once.
    os.kill(pid(tmp, "api-2"), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid(tmp, "api-2"), 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert [request(port, "POST", "/generate", body=b"{}")[0] for _ in range(4)] == [200] * 4
    assert [request(port, "GET", "/status/x")[0] for _ in range(4)] == [200] * 4

    # restart-one of an API: SIGTERM, wait for the exit, start again, ready, and
    # routed to by nginx again.
    restarted = run("restart-one", "api-2")
    assert restarted.returncode == 0, restarted.stderr
    assert "nginx routes to api-2 again" in restarted.stderr
    assert {json.loads(request(port, "GET", "/status/x")[2])["listen"] for _ in range(4)} \
        == {f"127.0.0.1:{port + 1}", f"127.0.0.1:{port + 2}"}

    # restart-one of a worker.
    old = pid(tmp, "worker-2")
    restarted = run("restart-one", "worker-2")
    assert restarted.returncode == 0, restarted.stderr
    assert pid(tmp, "worker-2") != old
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)
    assert "stopped worker-2" in restarted.stderr and "worker-2 ready" in restarted.stderr
