"""redis-infra-follow (redis_infra/follow.py): the start hook of Sentinel-managed instances, against real
redis-server processes and real Sentinels (redis-server --sentinel) on loopback."""

from __future__ import annotations

import grp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from redis_infra import follow
from tests.conftest import REDIS_SERVER, free_port

SENTINEL_PASSWORD = "sentinel-client-password-0123456789"
GROUP = grp.getgrgid(os.getgid()).gr_name


def test_decide_follows_a_majority_and_only_a_majority():
    a, b = ("10.0.0.1", 6379), ("10.0.0.2", 6379)
    cases = [
        # (answers, total, primary)
        ([a, a, a], 3, a),
        ([a, a, None], 3, a),            # one Sentinel down
        ([a, a, b], 3, a),               # a stale Sentinel is outvoted
        ([a, None, None], 3, None),      # a lone Sentinel is not a majority
        ([a, b, None], 3, None),         # split
        ([None, None, None], 3, None),   # every Sentinel down
        ([a, b], 2, None),
        ([a, a], 2, a),
        ([a], 1, a),
        ([a, a, b, b], 4, None),         # a tie is no majority
        ([a, a, a, b, None], 5, a),
        ([a, a, b, b, None], 5, None),
    ]
    for answers, total, primary in cases:
        assert follow.decide(answers, total).primary == primary, (answers, total)


def test_a_majority_naming_this_instance_makes_it_the_primary():
    config = follow.FollowConfig("main", "10.0.0.1", 6379, "/x", "redis", 1.0, (follow.Sentinel("h"),))
    assert follow.decide([("10.0.0.1", 6379)] * 2, 3).follows(config) is None
    assert follow.decide([("10.0.0.1", 6380)] * 2, 3).follows(config) == ("10.0.0.1", 6380)
    assert follow.render(None).count("replicaof") == 1  # the header's word only
    assert follow.render(("10.0.0.9", 6379)).endswith("\nreplicaof 10.0.0.9 6379\n")


VALID = 'name = "m"\naddress = "a"\nport = 6379\ninclude_file = "/x"\ngroup = "g"\n'
SENTINEL = '[[sentinels]]\nhost = "h"\n'


def test_tls_applies_to_every_sentinel():
    config = follow.parse(VALID + 'tls = true\ntls_ca_file = "/ca.crt"\ntls_cert_file = "/c.crt"\n'
                                  'tls_key_file = "/c.key"\ntls_check_hostname = false\n'
                                  + SENTINEL + '[[sentinels]]\nhost = "h2"\nport = 26380\npassword = "pw"\n')
    second = config.connection(config.sentinels[1])
    assert (second.host, second.port, second.password) == ("h2", 26380, "pw")
    assert second.tls_kwargs() == {"ssl": True, "ssl_ca_certs": "/ca.crt", "ssl_certfile": "/c.crt",
                                   "ssl_keyfile": "/c.key", "ssl_cert_reqs": "required", "ssl_check_hostname": False}
    assert config.connection(config.sentinels[0]).tls_kwargs() == second.tls_kwargs()
    plain = follow.parse(VALID + SENTINEL)
    assert plain.tls is False and plain.connection(plain.sentinels[0]).tls_kwargs() == {}


@pytest.mark.parametrize("text, message", [
    ("", "field 'name' is required"),
    ('name = "m"\naddress = "a"\nport = "6379"\ninclude_file = "/x"\ngroup = "g"\n', "field 'port' must be int"),
    ('name = "m"\naddress = "a"\nport = 6379\ninclude_file = "/x"\ngroup = "g"\n', "'sentinels' must list"),
    ('name = "m"\naddress = "a"\nport = 6379\ninclude_file = "/x"\ngroup = "g"\nwait = 900\n'
     '[[sentinels]]\nhost = "h"\n', "field 'wait' must be 0-300"),
    ('name = "m"\naddress = "a"\nport = 6379\ninclude_file = "/x"\ngroup = "g"\n'
     '[[sentinels]]\nhost = "h"\nport = 0\n', "port 0 is not 1-65535"),
    ('name = "m"\naddress = "a"\nport = 6379\ninclude_file = "/x"\ngroup = "g"\n'
     '[[sentinels]]\nhost = "h"\npasswd = "x"\n', "sentinels[0]: unknown field(s) passwd"),
    ('name = "m"\nadress = "a"\n', "unknown field(s) adress"),
    ("name = ", "not valid TOML"),
    (VALID + 'tls_ca_file = "/ca.crt"\n' + SENTINEL, "field(s) tls_ca_file need tls = true"),
    (VALID + 'tls = true\ntls_key_file = "/k"\n' + SENTINEL, "fields 'tls_cert_file' and 'tls_key_file' go together"),
    (VALID + 'tls = true\ntls_check_hostname = "yes"\n' + SENTINEL, "field 'tls_check_hostname' must be bool"),
    (VALID + 'tls = 1\n' + SENTINEL, "field 'tls' must be bool, got int"),
])
def test_bad_config_is_refused_naming_the_field(text, message):
    with pytest.raises(follow.FollowConfigError, match=re.escape(message)):
        follow.parse(text, "follow.toml")


def _start_sentinel(tmp_path: Path, primary_port: int, password: str = SENTINEL_PASSWORD, tls=None):
    """A Sentinel monitoring 127.0.0.1:primary_port as "main"; with tls (tests.conftest.TLSFiles), one that
    serves only TLS and reaches the primary through TLS, as the roles configure it."""
    port = free_port()
    workdir = tmp_path / f"sentinel-{port}"
    workdir.mkdir()
    conf = workdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\nrequirepass {password}\n"
                    + (tls.server_config(port) if tls else "")
                    + f"sentinel monitor main 127.0.0.1 {primary_port} 2\n"
                    f"sentinel down-after-milliseconds main 60000\n")
    proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    secure = {"ssl": True, "ssl_ca_certs": str(tls.ca_file)} if tls else {}
    client = redis.Redis(port=port, password=password, socket_timeout=1, **secure)
    for _ in range(100):
        try:
            client.ping()
            return proc, port
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"Sentinel on {port} did not start")


@pytest.fixture
def group(redis_factory, tmp_path):
    """A primary, a would-be replica and three Sentinels monitoring the primary (each with a password)."""
    primary = redis_factory()
    replica = redis_factory()
    sentinels = [_start_sentinel(tmp_path, primary.port) for _ in range(3)]
    yield primary, replica, [port for _, port in sentinels]
    for proc, _ in sentinels:
        proc.terminate()
        proc.wait(10)


def _config(tmp_path: Path, port: int, sentinel_ports, password=SENTINEL_PASSWORD, wait=0.0, tls=()) -> Path:
    include = tmp_path / f"replicaof-{port}.conf"
    path = tmp_path / f"follow-{port}.toml"
    lines = ['name = "main"', 'address = "127.0.0.1"', f"port = {port}", f'include_file = "{include}"',
             f'group = "{GROUP}"', f"wait = {wait}", *tls]
    for sentinel_port in sentinel_ports:
        lines += ["[[sentinels]]", 'host = "127.0.0.1"', f"port = {sentinel_port}"]
        if password:
            lines.append(f'password = "{password}"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _run(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "redis_infra.follow", str(config)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])


def test_a_replica_started_through_the_hook_comes_up_following_the_primary(group, redis_factory, tmp_path):
    primary, replica, sentinel_ports = group
    config = _config(tmp_path, replica.port, sentinel_ports)
    result = _run(config)
    assert result.returncode == 0, result.stderr
    assert f"starts as replica of 127.0.0.1:{primary.port} (3 of 3 Sentinels)" in result.stderr
    include = tmp_path / f"replicaof-{replica.port}.conf"
    assert include.read_text().endswith(f"\nreplicaof 127.0.0.1 {primary.port}\n")
    assert oct(include.stat().st_mode & 0o777) == "0o640"
    # A server that reads the file starts as a replica: no moment as a master.
    started = redis_factory(f"include {include}\n")
    assert redis.Redis(port=started.port).execute_command("ROLE")[0] in (b"slave", "slave")
    # Run again: the file already says it.
    again = _run(config)
    assert again.returncode == 0 and again.stderr.strip().endswith(", as before"), again.stderr
    assert SENTINEL_PASSWORD not in result.stderr + again.stderr


def test_the_primary_named_by_the_sentinels_starts_as_the_primary(group, tmp_path):
    primary, _, sentinel_ports = group
    include = tmp_path / f"replicaof-{primary.port}.conf"
    include.write_text(follow.render(("127.0.0.1", 1)))  # a stale file from when it was a replica
    result = _run(_config(tmp_path, primary.port, sentinel_ports))
    assert result.returncode == 0, result.stderr
    assert "starts as the primary (3 of 3 Sentinels)" in result.stderr
    assert "\nreplicaof" not in include.read_text()


def test_without_a_majority_it_follows_nobody_and_the_journal_says_why(group, tmp_path):
    """An earlier start's primary may be stale: without a majority the instance copies nobody."""
    primary, replica, sentinel_ports = group
    include = tmp_path / f"replicaof-{replica.port}.conf"
    include.write_text(follow.render(("127.0.0.1", primary.port)))
    # One Sentinel with the right password, two that refuse it or are not there: no majority.
    nobody = free_port()
    config = _config(tmp_path, replica.port, [sentinel_ports[0], nobody, nobody], wait=1.0)
    started = time.monotonic()
    result = _run(config)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.0, "it did not wait for a majority"
    assert "no majority of the 3 Sentinels (2 needed)" in result.stderr
    assert "starts as a master without replicas" in result.stderr
    assert f"127.0.0.1:{nobody}: ConnectionError" in result.stderr
    assert include.read_text() == follow.render(None)
    include.write_text(follow.render(("127.0.0.1", primary.port)))
    wrong = _run(_config(tmp_path, replica.port, sentinel_ports, password="not-the-password"))
    assert wrong.returncode == 0 and "no majority" in wrong.stderr, wrong.stderr
    assert "not-the-password" not in wrong.stderr and SENTINEL_PASSWORD not in wrong.stderr
    assert include.read_text() == follow.render(None)


def test_a_config_readable_by_others_or_an_unwritable_include_stops_the_start(group, tmp_path):
    _, replica, sentinel_ports = group
    missing = _run(tmp_path / "no-such.toml")
    assert missing.returncode == 2 and "cannot read the follow config: No such file" in missing.stderr, missing.stderr
    config = _config(tmp_path, replica.port, sentinel_ports)
    config.chmod(0o644)
    result = _run(config)
    assert result.returncode == 2 and "others can read it" in result.stderr, result.stderr
    config.chmod(0o600)
    text = config.read_text().replace(str(tmp_path / f"replicaof-{replica.port}.conf"),
                                      str(tmp_path / "missing-dir" / "replicaof.conf"))
    config.write_text(text)
    result = _run(config)
    assert result.returncode == 1, result.stderr
    assert "cannot write" in result.stderr and "not starting" in result.stderr


@pytest.fixture
def tls_group(tls_redis_factory, tls_files, tmp_path):
    """A primary and a Sentinel monitoring it, both serving only TLS."""
    primary = tls_redis_factory()
    sentinel, port = _start_sentinel(tmp_path, primary.port, tls=tls_files)
    yield primary, port
    sentinel.terminate()
    sentinel.wait(10)


def _tls_lines(ca_file) -> list[str]:
    return ["tls = true", f'tls_ca_file = "{ca_file}"', "tls_check_hostname = true"]


def test_a_sentinel_serving_only_tls_answers_through_tls(tls_group, tls_files, tmp_path):
    primary, sentinel_port = tls_group
    result = _run(_config(tmp_path, 6390, [sentinel_port], tls=_tls_lines(tls_files.ca_file)))
    assert result.returncode == 0, result.stderr
    assert f"starts as replica of 127.0.0.1:{primary.port} (1 of 1 Sentinels)" in result.stderr
    assert (tmp_path / "replicaof-6390.conf").read_text().endswith(f"\nreplicaof 127.0.0.1 {primary.port}\n")


def test_without_the_ca_that_signed_the_sentinel_there_is_no_answer_and_the_journal_says_why(
        tls_group, tls_files, tmp_path):
    primary, sentinel_port = tls_group
    include = tmp_path / "replicaof-6390.conf"
    include.write_text(follow.render(("127.0.0.1", primary.port)))
    result = _run(_config(tmp_path, 6390, [sentinel_port], tls=_tls_lines(tls_files.other_ca_file)))
    assert result.returncode == 0, result.stderr
    assert "no majority of the 1 Sentinels (1 needed)" in result.stderr
    assert f"127.0.0.1:{sentinel_port}: ConnectionError" in result.stderr
    assert "certificate verify failed" in result.stderr, result.stderr
    assert include.read_text() == follow.render(None)
    # Plain TCP to it: no answer either.
    plain = _run(_config(tmp_path, 6390, [sentinel_port]))
    assert plain.returncode == 0 and "no majority" in plain.stderr, plain.stderr
    assert SENTINEL_PASSWORD not in result.stderr + plain.stderr


def test_tls_files_that_cannot_be_loaded_stop_the_start_naming_them(tls_group, tmp_path):
    _, sentinel_port = tls_group
    missing = tmp_path / "no-ca.crt"
    result = _run(_config(tmp_path, 6390, [sentinel_port], tls=_tls_lines(missing)))
    assert result.returncode == 2, result.stderr
    assert f"cannot load the TLS files (tls_ca_file {missing})" in result.stderr
