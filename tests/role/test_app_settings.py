"""playbooks/app_settings.yml (role redis_app_settings): the env files it writes, read the way applications read
them, against real redis-server and Sentinel processes on loopback.

One inventory holds four topologies, each on its own "hosts" (connection local): a standalone host, a primary and
a replica, a Sentinel on each, a Redis Cluster host with three nodes, and a standalone host serving only TLS. Each
application names its server. The playbook runs five times against it: check mode on nothing, the converge, the
same again (no change), check mode with one application's pool size changed, and a list with an unknown user.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import yaml
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from tests.conftest import REDIS_SERVER, RedisProcess, cluster_port, free_port

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

# Characters a URL must encode and an env file must quote (no quote or backslash: preflight refuses those).
DEFAULT_PASSWORD = "app p@ss/w:rd+=#$x-0123456789"
SHOP_PASSWORD = "shop-password/with+base64=-0123456789"
SENTINEL_PASSWORD = "sentinel-client-password-0123456789"
ADMIN_PASSWORD = "admin-password-never-in-an-env-file-0123"
SENTINEL_ACL_PASSWORD = "sentinel-acl-password-0123456789"


def _hash(password: str) -> str:
    """A password as the role's ACL file holds it (a space would end a plain >password)."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


USERS = (f"user default on {_hash(DEFAULT_PASSWORD)} ~* &* +@all\n"
         f"user shop on {_hash(SHOP_PASSWORD)} ~shop:* &* +@all\n"
         f"user admin on {_hash(ADMIN_PASSWORD)} ~* &* +@all\n"
         f"user sentinel on >{SENTINEL_ACL_PASSWORD} allchannels +@all\n")
ACL_USERS = [{"name": "shop", "password": SHOP_PASSWORD, "rules": "~shop:* &* +@all"}]
SECRETS = (DEFAULT_PASSWORD, SHOP_PASSWORD, SENTINEL_PASSWORD, ADMIN_PASSWORD)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def parse_env(path: Path) -> dict[str, str]:
    """KEY=value lines as a dotenv reader sees them (values in single quotes are literal)."""
    values = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[key] = value
    return values


class Processes:
    """Servers and Sentinels of the module, each stopped by the fixture that started them."""

    def __init__(self, base: Path):
        self.base = base
        self.started: list[RedisProcess] = []

    def start(self, config: str, port: int | None = None, sentinel: bool = False) -> RedisProcess:
        port = port or free_port()
        workdir = self.base / f"{'sentinel' if sentinel else 'redis'}-{port}"
        workdir.mkdir()
        proc = RedisProcess(workdir, f"port {port}\nbind 127.0.0.1\ndir {workdir}\nsave \"\"\n"
                                     f"logfile {workdir / 'redis.log'}\n" + config, port)
        self.started.append(proc)
        if sentinel:
            # RedisProcess starts a server; a Sentinel is the same binary with --sentinel.
            with open(proc.log, "ab") as log:
                proc.proc = subprocess.Popen([REDIS_SERVER, str(proc.config), "--sentinel"], cwd=workdir,
                                             stdout=log, stderr=subprocess.STDOUT)
            client = redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=1)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    return proc
                except redis.RedisError:
                    if time.monotonic() > deadline or proc.proc.poll() is not None:
                        raise RuntimeError(f"Sentinel on {port} did not start:\n{proc.log_tail()}") from None
                    time.sleep(0.05)
        return proc.start()

    def stop(self) -> None:
        for proc in self.started:
            proc.stop()


def form_cluster(ports: list[int]) -> None:
    """Three primaries, the slots split between them; waits (bounded) until every node says ok."""
    clients = [redis.Redis(port=port, password=DEFAULT_PASSWORD, socket_timeout=2) for port in ports]
    bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
    for client, (first, last) in zip(clients, bounds, strict=True):
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
    for port in ports[1:]:
        clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
    deadline = time.monotonic() + 20
    while any(client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0 for client in clients):
        if time.monotonic() > deadline:
            raise RuntimeError("the test cluster did not reach cluster_state:ok in 20 s")
        time.sleep(0.1)


def host(**variables) -> dict:
    return dict({"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "ansible_become": False, "redis_server_bind": ["127.0.0.1"],
                 "redis_server_password": DEFAULT_PASSWORD, "redis_server_acl_users": ACL_USERS,
                 "redis_server_admin_password": ADMIN_PASSWORD}, **variables)


def _contents(*directories: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for directory in directories if directory.exists()
            for path in directory.iterdir()}


class Run:
    def __init__(self, result: subprocess.CompletedProcess):
        self.rc, self.output = result.returncode, result.stdout + result.stderr

    def changed(self, name: str = "localhost") -> int:
        match = re.search(rf"^{name}\s*:.*changed=(\d+)", self.output, re.MULTILINE)
        assert match, self.output
        return int(match.group(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tls_files):
    """Start every process, write the inventory, and run the playbook as the docstring says."""
    base = tmp_path_factory.mktemp("app-settings")
    processes = Processes(base)
    try:
        solo = processes.start(USERS)
        primary = processes.start(USERS)
        replica = processes.start(USERS + f"replicaof 127.0.0.1 {primary.port}\nmasterauth \"{DEFAULT_PASSWORD}\"\n")
        sentinels = [processes.start(f"requirepass {SENTINEL_PASSWORD}\n"
                                     f"sentinel monitor main 127.0.0.1 {primary.port} 1\n"
                                     "sentinel auth-user main sentinel\n"
                                     f"sentinel auth-pass main {SENTINEL_ACL_PASSWORD}\n"
                                     "sentinel down-after-milliseconds main 60000\n", sentinel=True)
                     for _ in range(2)]
        nodes = [processes.start(USERS + "cluster-enabled yes\ncluster-config-file nodes.conf\n", port=cluster_port())
                 for _ in range(3)]
        form_cluster([node.port for node in nodes])
        secure_port = free_port()
        secure = processes.start(USERS + tls_files.server_config(secure_port), port=secure_port)

        app_dir = base / "app1"
        app_dir.mkdir()
        controller = base / "controller"
        sentinel_settings = {"redis_server_sentinel": True, "redis_sentinel_password": SENTINEL_PASSWORD}
        inventory = {"all": {
            "hosts": {"localhost": host()},
            "children": {
                "redis": {"hosts": {
                    "solo": host(redis_server_instances=[{"name": "main", "port": solo.port}]),
                    "p1": host(redis_server_instances=[{"name": "main", "port": primary.port}],
                               redis_sentinel_port=sentinels[0].port, **sentinel_settings),
                    "r1": host(redis_server_instances=[{"name": "main", "port": replica.port}],
                               redis_sentinel_port=sentinels[1].port, **sentinel_settings),
                    "c1": host(redis_server_instances=[{"name": n, "port": node.port} for n, node in zip("abc", nodes,
                                                                                                          strict=True)],
                               redis_server_cluster_replicas=0),
                    "t1": host(redis_server_instances=[{"name": "main", "port": secure.port}], redis_server_tls=True),
                }},
                "redis_primary": {"hosts": {"p1": {}}},
                "redis_replicas": {"hosts": {"r1": {}}},
                "redis_sentinel": {"hosts": {"p1": {}, "r1": {}}},
                "redis_cluster": {"hosts": {"c1": {}}},
                "apps": {"hosts": {"app1": host()}},
            },
        }}
        for name in ("p1", "r1", "c1"):
            inventory["all"]["children"]["redis"]["hosts"][name]["redis_server_replication_address"] = "127.0.0.1"
        (base / "inventory.yml").write_text(yaml.safe_dump(inventory))
        apps = [
            {"name": "web", "server": "solo"},
            {"name": "shop", "user": "shop", "db": 3, "server": "solo", "host": "app1", "owner": "nobody",
             "group": "nogroup", "dest": str(app_dir / "shop.env"), "verify_prefix": "shop:verify:"},
            {"name": "ha", "server": "p1", "instance": "main"},
            {"name": "sharded", "server": "c1", "user": "shop", "verify_prefix": "shop:verify:"},
            {"name": "secure", "server": "t1"},
        ]
        settings = {"redis_app_settings_apps": apps, "redis_app_settings_controller_dir": str(controller),
                    "redis_app_settings_tls_ca_file": str(tls_files.ca_file)}

        def run(extra: dict, *args: str, playbook: str = "app_settings.yml") -> Run:
            extra_file = base / "extra.json"
            extra_file.write_text(json.dumps(dict(settings, **extra)))
            env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
            return Run(subprocess.run(
                [str(ANSIBLE_PLAYBOOK), "-i", str(base / "inventory.yml"), "-e", f"@{extra_file}", *args,
                 str(ROOT / "playbooks" / playbook)],
                capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False, stdin=subprocess.DEVNULL))

        runs = {"check_first": run({}, "--check", "--diff")}
        runs["created_before_converge"] = controller.exists() or (app_dir / "shop.env").exists()
        runs["converge"] = run({})
        files = _contents(controller, app_dir)
        runs["again"] = run({})
        changed_apps = [dict(app, pool_size=17) if app["name"] == "web" else app for app in apps]
        runs["check_change"] = run({"redis_app_settings_apps": changed_apps}, "--check", "--diff")
        runs["files_after_check"] = _contents(controller, app_dir)
        runs["files"] = files
        bad_controller = base / "refused"
        runs["unknown_user"] = run({"redis_app_settings_controller_dir": str(bad_controller),
                                    "redis_app_settings_apps": [{"name": "fine", "server": "solo"},
                                                                {"name": "bad", "server": "solo", "user": "admin"}]})
        runs["refused_dir"] = bad_controller
        # playbooks/verify.yml on the controller's env files (app1 is this machine: its app is left out), each
        # topology passing.
        verify = {"redis_app_settings_verify_apps": ["web", "ha", "sharded", "secure"],
                  "redis_app_settings_verify_max_p99_ms": 500, "redis_app_settings_verify_min_ops_per_second": 100}
        # --limit: app1 is this machine, where the play that installs the tools on application hosts must not run.
        runs["verify"] = run(verify, "-v", "--limit", "!app1", playbook="verify.yml")
        yield {"runs": runs, "controller": controller, "app_dir": app_dir, "primary": primary, "tls": tls_files,
               "solo": solo, "run": run, "verify": verify}
    finally:
        processes.stop()


def _env(lab, name: str) -> dict[str, str]:
    path = lab["app_dir"] / "shop.env" if name == "shop" else lab["controller"] / f"{name}.env"
    return parse_env(path)


def test_the_converge_succeeds_and_logs_no_secret(lab):
    runs = lab["runs"]
    for key in ("check_first", "converge", "again", "check_change", "unknown_user"):
        for secret in SECRETS:
            assert secret not in runs[key].output, f"a password is in the output of the {key} run"
    assert runs["converge"].rc == 0, runs["converge"].output


def test_standalone_url_works_with_each_apps_own_user_only(lab):
    web, shop = _env(lab, "web"), _env(lab, "shop")
    client = redis.from_url(web["REDIS_URL"], socket_timeout=2)
    client.set("web:greeting", "hello")
    assert client.get("web:greeting") == b"hello"
    assert web["REDIS_PASSWORD"] == DEFAULT_PASSWORD and web["REDIS_USERNAME"] == "default"
    assert (web["REDIS_CLUSTER_MODE"], web["REDIS_SENTINELS"], web["REDIS_TLS"]) == ("false", "", "false")
    # The development profile's pool and timeouts, as in the guide's table.
    tuning = (web["REDIS_POOL_SIZE"], web["REDIS_CONNECTION_TIMEOUT"], web["REDIS_COMMAND_TIMEOUT"])
    assert tuning == ("5", "5000", "5000")

    shop_client = redis.from_url(shop["REDIS_URL"], socket_timeout=2)
    assert shop_client.connection_pool.connection_kwargs["db"] == 3 and shop["REDIS_DB"] == "3"
    shop_client.set("shop:cart:1", "2 items")
    assert shop_client.get("shop:cart:1") == b"2 items"
    with pytest.raises(redis.exceptions.NoPermissionError):
        shop_client.set("web:greeting", "not mine")
    for name, own in (("web", DEFAULT_PASSWORD), ("shop", SHOP_PASSWORD), ("ha", DEFAULT_PASSWORD),
                      ("sharded", SHOP_PASSWORD), ("secure", DEFAULT_PASSWORD)):
        path = lab["app_dir"] / "shop.env" if name == "shop" else lab["controller"] / f"{name}.env"
        text = path.read_text()
        assert own in text, name
        others = [secret for secret in SECRETS if secret != own and secret != SENTINEL_PASSWORD]
        assert not [secret for secret in others if secret in text], f"{name}.env holds another user's password"


def test_files_are_0600_in_a_0700_directory_and_owned_by_the_apps_user(lab):
    assert stat.S_IMODE(lab["controller"].stat().st_mode) == 0o700
    for path in lab["controller"].glob("*.env"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    shop = lab["app_dir"] / "shop.env"
    assert stat.S_IMODE(shop.stat().st_mode) == 0o600
    assert pwd.getpwuid(shop.stat().st_uid).pw_name == "nobody"


def test_sentinel_clients_find_the_primary_through_the_sentinels(lab):
    ha = _env(lab, "ha")
    assert ha["REDIS_PORT"] == str(lab["primary"].port)  # the bootstrap primary
    sentinels = [(address, int(port)) for address, port in
                 (item.rsplit(":", 1) for item in ha["REDIS_SENTINELS"].split(","))]
    assert len(sentinels) == 2 and ha["REDIS_SENTINEL_MASTER"] == "main"
    sentinel = Sentinel(sentinels, sentinel_kwargs={"password": ha["REDIS_SENTINEL_PASSWORD"], "socket_timeout": 2},
                        socket_timeout=2)
    master = sentinel.master_for(ha["REDIS_SENTINEL_MASTER"], username=ha["REDIS_USERNAME"],
                                 password=ha["REDIS_PASSWORD"], db=int(ha["REDIS_DB"]))
    master.set("ha:key", "through sentinel")
    assert redis.from_url(ha["REDIS_URL"], socket_timeout=2).get("ha:key") == b"through sentinel"


def test_cluster_nodes_reach_every_slot(lab):
    sharded = _env(lab, "sharded")
    assert sharded["REDIS_CLUSTER_MODE"] == "true" and sharded["REDIS_DB"] == "0"
    nodes = [ClusterNode(address, int(port)) for address, port in
             (item.rsplit(":", 1) for item in sharded["REDIS_CLUSTER_NODES"].split(","))]
    assert len(nodes) == 3
    client = RedisCluster(startup_nodes=nodes, username=sharded["REDIS_USERNAME"], password=sharded["REDIS_PASSWORD"],
                          socket_timeout=2)
    try:
        keys = [f"shop:{{{tag}}}:item" for tag in ("a", "b", "c", "d", "e", "f")]
        assert len({client.keyslot(key) // 5461 for key in keys}) == 3  # the keys span the three primaries
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
    finally:
        client.close()


def test_tls_url_and_ca_file(lab):
    secure = _env(lab, "secure")
    assert secure["REDIS_URL"].startswith("rediss://") and secure["REDIS_TLS"] == "true"
    assert secure["REDIS_TLS_CA_FILE"] == str(lab["tls"].ca_file)
    client = redis.from_url(secure["REDIS_URL"], ssl_ca_certs=secure["REDIS_TLS_CA_FILE"], socket_timeout=2)
    client.set("secure:key", "over tls")
    assert client.get("secure:key") == b"over tls"


def test_check_mode_says_what_would_change_and_changes_nothing(lab):
    runs = lab["runs"]
    assert runs["check_first"].rc == 0, runs["check_first"].output
    assert runs["created_before_converge"] is False
    assert "web.env" in runs["check_first"].output and "shop.env" in runs["check_first"].output
    assert runs["check_change"].rc == 0, runs["check_change"].output
    assert runs["check_change"].changed() > 0
    assert "web.env" in runs["check_change"].output
    assert runs["files_after_check"] == runs["files"]


def test_a_second_run_changes_nothing(lab):
    again = lab["runs"]["again"]
    assert again.rc == 0, again.output
    assert again.changed() == 0, again.output
    assert "No change." in again.output


def test_an_unknown_user_is_refused_before_anything_is_written(lab):
    refused = lab["runs"]["unknown_user"]
    assert refused.rc != 0
    assert "redis_app_settings_apps[bad].user=admin" in refused.output, refused.output
    assert not lab["runs"]["refused_dir"].exists()


def test_verify_playbook_passes_every_check_of_each_topology(lab):
    verify = lab["runs"]["verify"]
    assert verify.rc == 0, verify.output
    for secret in SECRETS:
        assert secret not in verify.output
    for app, topology_check in (("web", "SKIPPED readiness: standalone"),
                                ("ha", "OK      readiness: 2 Sentinels agree"),
                                ("sharded", "OK      readiness: cluster_state ok, 16384/16384 slots"),
                                ("secure", "OK      connection: standalone")):
        lines = re.findall(rf"{app}: \[(.*?)\]", verify.output, re.S)
        assert lines, verify.output
        text = lines[0]
        for check in ("connection", "basic", "advanced", "uses", "performance"):
            assert f"OK      {check}:" in text, (app, text)
        assert topology_check in text, (app, text)
        assert "FAILED" not in text, (app, text)
    assert "cache, sessions, rate limit, pub/sub, locks, queues" in verify.output
    assert "with 1 replica(s) up" in verify.output
    # Only the test's own keys, and none left behind.
    client = redis.from_url(_env(lab, "web")["REDIS_URL"], socket_timeout=2)
    assert list(client.scan_iter("*verify*")) == []


def test_verify_fails_a_threshold_naming_it(lab):
    web = str(lab["controller"] / "web.env")
    result = subprocess.run([sys.executable, "-m", "redis_infra.verify", "--env-file", web,
                             "--checks", "connection,performance", "--min-ops-per-second", "1e9"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 1
    assert re.search(r"^FAILED  performance: .*pipelined SETs at \d+/s \(at least 1e\+09\)", result.stderr, re.M), \
        result.stderr
    assert "OK      connection" in result.stderr


def test_verify_fails_naming_the_check_on_a_wrong_password_and_a_server_down(lab, tmp_path):
    web = lab["controller"] / "web.env"
    wrong = tmp_path / "wrong.env"
    wrong.write_text(web.read_text().replace(DEFAULT_PASSWORD, "not-the-password")
                     .replace(quote(DEFAULT_PASSWORD, safe=""), "not-the-password"))
    command = [sys.executable, "-m", "redis_infra.verify", "--env-file"]
    result = subprocess.run([*command, str(wrong)], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 1
    assert re.search(r"^FAILED  connection: .*(WRONGPASS|AuthenticationError|invalid)", result.stderr, re.M), \
        result.stderr
    assert "not-the-password" not in result.stderr
    lab["solo"].stop()
    down = lab["run"](dict(lab["verify"], redis_app_settings_verify_apps=["web"]), "--limit", "!app1",
                      playbook="verify.yml")
    assert down.rc != 0
    assert re.search(r"web: FAILED  connection: ConnectionError", down.output), down.output
