"""The applications' local proxy (role redis_app_settings: templates/haproxy.cfg.j2, filter redis_proxy_listener):
the configuration the role renders, run by Debian's real HAProxy in front of a real primary and replica on
loopback, with the check user's ACL the redis_server role gives it.

It proves what an application behind the proxy sees: writes reach the instance that answers ROLE as a master,
reads on the replica port reach a replica and refuse writes, a swap of roles moves the primary port within two
checks and drops the connections to the old primary, and a wrong check password or a certificate that does not
name the server routes nowhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from tests.conftest import REDIS_SERVER, RedisProcess, free_port
from tests.role.test_config_template import make_certificates

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)

APP_PASSWORD = "app-password-0123456789abcdef"
# Spaces, quotes, '#' and a backslash: HAProxy's configuration would need each quoted; the role sends it as hex.
PROXY_PASSWORD = "proxy p\"w' #\\x-0123456789"
ROLE_DEFAULTS = yaml.safe_load((ROOT / "roles/redis_server/defaults/main.yml").read_text())
PROXY_ACL = ROLE_DEFAULTS["redis_server_proxy_acl"]

pytestmark = [pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
              pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (scripts/bootstrap-host.sh)")]


class Group:
    """A primary and a replica on loopback, each with the application user and the proxy's check user."""

    def __init__(self, base: Path, certificates: dict | None = None):
        self.base = base
        self.certificates = certificates
        self.servers: dict[str, RedisProcess] = {}
        self.ports: dict[str, int] = {}

    def start(self) -> Group:
        for name in ("node-a", "node-b"):
            port, admin_port = free_port(), free_port()
            workdir = self.base / name
            workdir.mkdir()
            # The tests' own plaintext port (admin_port) beside the port the proxy reaches.
            config = (f"port {admin_port}\nbind 127.0.0.1\ndir {workdir}\nsave \"\"\nappendonly no\n"
                      f"requirepass {APP_PASSWORD}\nmasterauth {APP_PASSWORD}\n")
            if self.certificates:
                config += (f"tls-port {port}\ntls-cert-file {self.certificates['server.crt']}\n"
                           f"tls-key-file {self.certificates['server.key']}\n"
                           f"tls-ca-cert-file {self.certificates['ca.crt']}\ntls-auth-clients optional\n")
            else:
                config = config.replace(f"port {admin_port}\n", f"port {port}\n")
                admin_port = port
            server = RedisProcess(workdir, config, admin_port).start()
            self.servers[name], self.ports[name] = server, port
            self.admin(name).execute_command("ACL", "SETUSER", "proxy", "on", f">{PROXY_PASSWORD}", *PROXY_ACL.split())
        self.admin("node-b").replicaof("127.0.0.1", self.ports["node-a"] if not self.certificates
                                       else self.servers["node-a"].port)
        wait_for(lambda: self.admin("node-b").info("replication")["master_link_status"] == "up", "the replica's link")
        return self

    def admin(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.servers[name].port, password=APP_PASSWORD, decode_responses=True)

    def swap(self, primary: str, replica: str) -> None:
        """The replica becomes the primary and the primary its replica, as a failover leaves them."""
        self.admin(primary).replicaof("NO", "ONE")
        self.admin(replica).replicaof("127.0.0.1", self.servers[primary].port)

    def summary(self, proxy_password: str = PROXY_PASSWORD, prefix: str = "node", min_replicas: int = 1) -> dict:
        """What the servers publish (tasks/server.yml), with inventory names <prefix>-a and <prefix>-b; the group
        requires min_replicas replicas to take writes (production's default with replicas is 1)."""
        names = {name: name.replace("node", prefix) for name in self.servers}
        replication = {"enabled": True, "primaries": [names["node-a"]], "replicas": [names["node-b"]],
                       "min_replicas_to_write": min_replicas}
        tls = {"enabled": self.certificates is not None}
        servers = [{"host": names[name], "address": "127.0.0.1", "replication": replication, "tls": tls,
                    "instances": [{"name": "redis", "port": self.ports[name]}]} for name in self.servers]
        return {"summary": dict(servers[0], proxy_user="proxy", proxy_password=proxy_password), "servers": servers}

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def wait_for(condition, what: str, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


class Proxy:
    """HAProxy in the foreground on the role's rendered configuration."""

    def __init__(self, base: Path, group: Group, **variables):
        self.base = base
        base.mkdir()
        self.socket = base / "stats.sock"
        port = free_port()
        extra = dict(group.summary(**variables), instance_name="redis", out_dir=str(base),
                     _redis_app_settings_proxy_stats_socket=str(self.socket),
                     _redis_app_settings_proxy_admin_socket=str(base / "admin.sock"),
                     _redis_app_settings_proxy_config=str(base / "haproxy.cfg"),
                     _redis_app_settings_proxy_state_file=str(base / "server-state"),
                     _redis_app_settings_proxy_loaded=str(base / "loaded-config"),
                     redis_app_settings_tls_ca_file=str(group.certificates["ca.crt"]) if group.certificates else None,
                     redis_app_settings_proxy_port_offset=port - group.ports["node-a"],
                     redis_app_settings_proxy_replica_port_offset=free_port() - group.ports["node-a"],
                     ansible_python_interpreter=sys.executable)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        result = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(ROOT / "tests/role/render_proxy.yml"),
                                 "-e", json.dumps(extra)], capture_output=True, text=True, cwd=ROOT, env=env,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        self.config = base / "haproxy.cfg"
        self.port = port
        self.replica_port = group.ports["node-a"] + extra["redis_app_settings_proxy_replica_port_offset"]
        checked = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True,
                                 check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.log = base / "haproxy.log"
        self.proc = self.start()

    def start(self, *options: str) -> subprocess.Popen:
        with open(self.log, "ab") as log:
            return subprocess.Popen([HAPROXY, "-db", "-f", str(self.config), *options], stdout=log,
                                    stderr=subprocess.STDOUT)

    def reload(self) -> None:
        """What the unit's reload does: check, save the checks' results, start the new process (which takes
        over the listeners and tells the old one to finish: -sf)."""
        unit = (self.base / "redis-infra-proxy.service").read_text().splitlines()
        for line in (line.split("=", 1)[1] for line in unit if line.startswith("ExecReload=")):
            if "kill -USR2" in line:
                old, self.proc = self.proc, self.start("-sf", str(self.proc.pid))
                old.wait(timeout=10)
            else:
                subprocess.run(shlex.split(line.replace("/usr/sbin/haproxy", HAPROXY)), check=True, timeout=10)

    def status(self) -> dict[tuple[str, str], str]:
        """(proxy, server) -> UP or DOWN, from HAProxy's statistics on its unix socket."""
        result = subprocess.run(["curl", "-s", "--unix-socket", str(self.socket), "http://localhost/;csv"],
                                capture_output=True, text=True, check=False, timeout=5)
        rows = [line.split(",") for line in result.stdout.splitlines() if line and not line.startswith("#")]
        return {(row[0], row[1]): row[17] for row in rows if row[1] not in ("FRONTEND", "BACKEND")}

    def client(self, replica: bool = False, **options) -> redis.Redis:
        options.setdefault("socket_timeout", 2)
        return redis.Redis(port=self.replica_port if replica else self.port, password=APP_PASSWORD,
                           decode_responses=True, **options)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def up(proxy: Proxy, listener: str) -> set[str]:
    """The hosts whose server is UP behind the listener, going down ("UP 1/2") included (server names are
    host:port[:tls])."""
    return {server.split(":")[0] for (name, server), status in proxy.status().items()
            if name.endswith(listener) and status.startswith("UP")}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    base = tmp_path_factory.mktemp("proxy")
    group = Group(base).start()
    proxy = Proxy(base / "haproxy", group)
    try:
        wait_for(lambda: up(proxy, "-primary") == {"node-a"} and up(proxy, "-replicas") == {"node-b"},
                 f"the proxy's first checks ({proxy.log})")
        yield group, proxy
    finally:
        proxy.stop()
        group.stop()


def test_the_primary_port_writes_to_the_master_and_the_replica_port_reads_a_replica(plain):
    group, proxy = plain
    primary, replica = proxy.client(), proxy.client(replica=True)
    assert primary.execute_command("ROLE")[0] == "master"
    primary.set("proxy:test:key", "written")
    wait_for(lambda: replica.get("proxy:test:key") == "written", "the replica port reading the write")
    assert replica.execute_command("ROLE")[0] == "slave"
    with pytest.raises(redis.ReadOnlyError):
        replica.set("proxy:test:other", "refused")


def test_the_check_user_may_ask_for_the_role_and_nothing_else(plain):
    group, _ = plain
    check = redis.Redis(port=group.servers["node-a"].port, username="proxy", password=PROXY_PASSWORD,
                        decode_responses=True)
    assert check.execute_command("ROLE")[0] == "master"
    for command in (("GET", "proxy:test:key"), ("INFO",), ("CONFIG", "GET", "requirepass"), ("KEYS", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            check.execute_command(*command)


def test_the_configuration_holds_the_password_only_as_hex_and_checks_it(plain):
    _, proxy = plain
    text = proxy.config.read_text()
    assert PROXY_PASSWORD not in text and APP_PASSWORD not in text
    assert PROXY_PASSWORD.encode().hex() in text
    unit = (proxy.base / "redis-infra-proxy.service").read_text()
    assert "User=haproxy" in unit and "CapabilityBoundingSet=\n" in unit and "ExecReload=/usr/sbin/haproxy -c" in unit
    # HAProxy refuses to start without the descriptors its threads and maxconn need (strict-limits): with the
    # unit's limit, one thread per CPU of a large host would not start; the configuration fixes two.
    assert "\n    nbthread 2\n" in text
    limit = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))
    maxconn = int(re.search(r"^    maxconn (\d+)$", text, re.M).group(1))
    assert limit >= 2 * maxconn + 2 * 3 + 512, (limit, maxconn)
    # The servers' names carry their ports, so that a reload never applies a saved port to a new definition.
    assert re.search(r"^    server node-a:\d+ 127\.0\.0\.1:\d+ check", text, re.M), text


def test_a_swap_of_roles_moves_the_primary_port_within_two_checks_and_drops_old_connections(plain):
    group, proxy = plain
    # A client's connection to the old primary, made through the proxy before the swap (raw, so that no client
    # library reconnects behind the test's back).
    before = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    before.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(APP_PASSWORD)}\r\n{APP_PASSWORD}\r\n".encode())
    assert before.recv(100) == b"+OK\r\n"
    group.swap("node-b", "node-a")
    try:
        moved = wait_for(lambda: proxy.client().set("proxy:test:after", "2") and up(proxy, "-primary") == {"node-b"},
                         "writes through the primary port after the swap")
        wait_for(lambda: up(proxy, "-replicas") == {"node-a"}, "the old primary on the replica port", timeout=15)
        # The connection made before the swap went to node-a: the proxy closed it when node-a failed its check,
        # so the client reconnects, through the proxy, to node-b.
        assert before.recv(100) == b"", "the connection to the old primary is still open"
        assert proxy.client().execute_command("ROLE")[0] == "master"
        assert group.admin("node-b").get("proxy:test:after") == "2"
        assert moved < 4.0, f"the primary port moved after {moved:.1f} s (checks every 1 s, rise 2)"
    finally:
        before.close()
        group.swap("node-a", "node-b")
        wait_for(lambda: up(proxy, "-primary") == {"node-a"} and up(proxy, "-replicas") == {"node-b"},
                 "the roles swapped back", timeout=15)


def test_a_reload_keeps_the_checks_results_so_a_replica_never_starts_up(plain):
    _, proxy = plain
    proxy.reload()
    seen = set()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:          # the new process's first second, before its own checks
        status = proxy.status()
        seen |= {server.split(":")[0] for (name, server), state in status.items()
                 if name.endswith("-primary") and state.startswith("UP")}
        time.sleep(0.05)
    assert seen == {"node-a"}, f"servers UP on the primary port right after the reload: {seen}"
    assert "show servers state" not in proxy.log.read_text()
    assert proxy.client().execute_command("ROLE")[0] == "master"
    # The reload recorded which configuration the running proxy loaded: the role reloads whenever it differs.
    loaded = (proxy.base / "loaded-config").read_text().split()[0]
    assert loaded == hashlib.sha256(proxy.config.read_bytes()).hexdigest()


def test_a_primary_without_a_replica_online_is_not_routed_when_the_group_requires_one(plain):
    """Two masters, neither with a replica (what an old primary that comes back before Sentinel demotes it looks
    like, beside a new primary whose replicas have not attached yet): the primary port routes to neither."""
    group, proxy = plain
    group.admin("node-b").replicaof("NO", "ONE")
    try:
        wait_for(lambda: len(proxy.status()) == 4 and not up(proxy, "-primary"),
                 "the primary port without a primary that has a replica")
        with pytest.raises(redis.ConnectionError):
            proxy.client(socket_connect_timeout=2).ping()
    finally:
        group.admin("node-b").replicaof("127.0.0.1", group.servers["node-a"].port)
        wait_for(lambda: up(proxy, "-primary") == {"node-a"} and up(proxy, "-replicas") == {"node-b"},
                 "node-b back as the replica", timeout=15)


def test_a_wrong_check_password_routes_nowhere(plain, tmp_path):
    group, _ = plain
    wrong = Proxy(tmp_path / "wrong", group, proxy_password="not-the-password-0123456789")
    try:
        wait_for(lambda: len(wrong.status()) == 4 and not up(wrong, "-primary") and not up(wrong, "-replicas"),
                 "every server down")
        time.sleep(2.5)                         # rise 2: two more checks would have brought one up
        assert not up(wrong, "-primary")
        with pytest.raises(redis.ConnectionError):
            wrong.client(socket_connect_timeout=2).ping()
    finally:
        wrong.stop()


@pytest.mark.parametrize("names_match", [True, False], ids=["certificate-names-the-server", "certificate-mismatch"])
def test_tls_checks_and_traffic_verify_the_servers_certificate(tmp_path, names_match):
    # One server certificate naming node-a, node-b and 127.0.0.1.
    certificates = make_certificates(tmp_path / "tls", "DNS:node-a,DNS:node-b,IP:127.0.0.1")
    group = Group(tmp_path, certificates).start()
    # Reached as 127.0.0.1, a server is checked against its inventory name: node-a and node-b are in the
    # certificate, rogue-a and rogue-b are not.
    # A group that does not require a replica to take writes: the primary's check is ROLE master alone.
    proxy = Proxy(tmp_path / "haproxy", group, prefix="node" if names_match else "rogue", min_replicas=0)
    try:
        assert "ssl verify required" in proxy.config.read_text()
        if names_match:
            wait_for(lambda: up(proxy, "-primary") == {"node-a"} and up(proxy, "-replicas") == {"node-b"},
                     f"the proxy's checks over TLS ({proxy.log})")
            proxy.client().set("proxy:tls", "1")
            wait_for(lambda: proxy.client(replica=True).get("proxy:tls") == "1", "the replica port over TLS")
        else:
            wait_for(lambda: len(proxy.status()) == 4, "the proxy's statistics")
            time.sleep(2.5)
            assert not up(proxy, "-primary") and not up(proxy, "-replicas"), proxy.log.read_text()[-2000:]
            with pytest.raises(redis.ConnectionError):
                proxy.client(socket_connect_timeout=2).ping()
    finally:
        proxy.stop()
        group.stop()
