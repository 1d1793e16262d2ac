"""The acceptance checks. Each returns (status, detail, figures); a check that raises fails with the
exception's message. Keys live under one prefix with a hash tag, so that a cluster keeps them in one slot."""

from __future__ import annotations

import secrets
import statistics
import time
from dataclasses import dataclass, field

from . import FAILED, OK, SKIPPED
from .envfile import Settings


@dataclass
class Context:
    settings: Settings
    prefix: str
    expect_replicas: int
    max_p99_ms: float
    min_ops_per_second: float
    operations: int
    client: object = None
    keys: set = field(default_factory=set)

    def __post_init__(self):
        # The prefix first (key patterns of ACLs match it), then a hash tag: one slot in a cluster.
        self.tag = self.prefix + "{" + secrets.token_hex(4) + "}"

    def key(self, name: str) -> str:
        key = f"{self.tag}:{name}"
        self.keys.add(key)
        return key


def connection(ctx: Context):
    started = time.monotonic()
    ctx.client = ctx.settings.client()
    assert ctx.client.ping() is True, "PING did not answer PONG"
    host, port = ctx.settings.primary_address()
    return OK, f"{ctx.settings.topology}: PONG from {host}:{port} in {1000 * (time.monotonic() - started):.1f} ms", {}


def authentication(ctx: Context):
    import redis

    if not ctx.settings.password:
        return SKIPPED, "the env file has no password (development without one)", {}
    host, port = ctx.settings.primary_address()
    wrong = ctx.settings.node_client(host, port, ctx.settings.password + "-wrong")
    try:
        wrong.ping()
    except redis.AuthenticationError:
        pass
    except redis.ResponseError as exc:
        if "WRONGPASS" not in str(exc) and "invalid" not in str(exc).lower():
            raise
    else:
        return FAILED, "a wrong password was accepted", {}
    finally:
        wrong.close()
    nobody = ctx.settings.node_client(host, port, None, username="")
    try:
        nobody.ping()
    except redis.AuthenticationError as exc:
        refused = type(exc).__name__
    except redis.ResponseError as exc:
        if not any(word in str(exc) for word in ("NOAUTH", "WRONGPASS", "NOPERM")):
            raise
        refused = str(exc).split(" ", 1)[0]
    else:
        return FAILED, "a client without a password is served", {}
    finally:
        nobody.close()
    return OK, f"the file's password works, a wrong one is refused, none is refused ({refused})", {}


def basic(ctx: Context):
    client, key = ctx.client, ctx.key("basic")
    assert client.set(key, "value"), "SET failed"
    assert client.get(key) == "value", "GET did not return what SET wrote"
    assert client.delete(key) == 1 and client.get(key) is None, "DEL did not delete"
    return OK, "SET, GET, DEL", {}


def advanced(ctx: Context):
    client = ctx.client
    a, b, h, lst = ctx.key("m1"), ctx.key("m2"), ctx.key("hash"), ctx.key("list")
    assert client.mset({a: "1", b: "2"}) and client.mget([a, b]) == ["1", "2"], "MSET/MGET"
    client.hset(h, mapping={"field": "value", "other": "2"})
    assert client.hgetall(h) == {"field": "value", "other": "2"}, "HSET/HGETALL"
    client.rpush(lst, "x", "y", "z")
    assert client.lrange(lst, 0, -1) == ["x", "y", "z"], "RPUSH/LRANGE"
    pipe = client.pipeline(transaction=True) if not ctx.settings.cluster_nodes else None
    if pipe is not None:
        pipe.incr(a).incr(b).execute()
        assert client.mget([a, b]) == ["2", "3"], "MULTI/EXEC"
        detail = "MSET/MGET, HSET/HGETALL, RPUSH/LRANGE, MULTI/EXEC"
    else:   # redis-py's cluster client has no MULTI; a Lua script is the cluster's transaction of one slot
        result = client.eval("redis.call('INCR', KEYS[1]) return redis.call('INCR', KEYS[2])", 2, a, b)
        assert result == 3 and client.mget([a, b]) == ["2", "3"], "EVAL across two keys of one slot"
        detail = "MSET/MGET, HSET/HGETALL, RPUSH/LRANGE, an atomic EVAL on one slot"
    return OK, detail, {}


def uses(ctx: Context):
    """The guide's six uses: caching, sessions, rate limiting, pub/sub, locks, queues."""
    client = ctx.client
    cache, session, limit, lock, queue = (ctx.key(n) for n in ("cache", "session", "ratelimit", "lock", "queue"))
    done = []
    assert client.set(cache, "answer", ex=3600) and 0 < client.ttl(cache) <= 3600, "cache with a TTL"
    done.append("cache")
    client.hset(session, mapping={"user": "1"})
    client.expire(session, 86400)
    assert client.hgetall(session) == {"user": "1"} and client.ttl(session) > 0, "session"
    done.append("sessions")
    script = ("local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
              "return n")
    assert [client.eval(script, 1, limit, 900) for _attempt in range(3)] == [1, 2, 3], "rate limit"
    done.append("rate limit")
    _pubsub(ctx)
    done.append("pub/sub")
    assert client.set(lock, "token-1", nx=True, px=5000) and not client.set(lock, "token-2", nx=True, px=5000), "lock"
    release = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
    assert client.eval(release, 1, lock, "token-2") == 0 and client.eval(release, 1, lock, "token-1") == 1, "unlock"
    done.append("locks")
    client.lpush(queue, "job-1")
    assert client.brpop([queue], timeout=1) == (queue, "job-1"), "queue"
    done.append("queues")
    return OK, ", ".join(done), {"uses": done}


def _pubsub(ctx: Context) -> None:
    client = ctx.client
    if ctx.settings.cluster_nodes:       # a subscriber on one node; PUBLISH reaches every node
        client = client.get_redis_connection(client.get_node_from_key(ctx.tag))
    channel = f"{ctx.tag}:events"
    subscriber = client.pubsub()
    try:
        subscriber.subscribe(channel)
        deadline = time.monotonic() + 5
        while subscriber.get_message(timeout=0.5) is None and time.monotonic() < deadline:
            pass
        assert client.publish(channel, "created") >= 1, "PUBLISH reached no subscriber"
        while time.monotonic() < deadline:
            message = subscriber.get_message(timeout=0.5)
            if message and message.get("type") == "message":
                assert message["data"] == "created", "pub/sub delivered something else"
                return
        raise AssertionError("the subscriber got nothing within 5 s")
    finally:
        subscriber.close()


def performance(ctx: Context):
    client = ctx.client
    key = ctx.key("perf")
    client.set(key, "x")
    latencies = []
    for _sample in range(ctx.operations):
        started = time.perf_counter()
        client.get(key)
        latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for index in range(ctx.operations):
        pipe.set(key, index)
    pipe.execute()
    rate = ctx.operations / (time.perf_counter() - started)
    figures = {"get_p50_ms": round(p50, 3), "get_p99_ms": round(p99, 3), "pipelined_sets_per_second": round(rate)}
    detail = (f"{ctx.operations} GETs: p50 {p50:.2f} ms, p99 {p99:.2f} ms (at most {ctx.max_p99_ms:g}); "
              f"{ctx.operations} pipelined SETs at {rate:.0f}/s (at least {ctx.min_ops_per_second:g})")
    ok = p99 <= ctx.max_p99_ms and rate >= ctx.min_ops_per_second
    return (OK if ok else FAILED), detail, figures


def replica_reads(ctx: Context):
    import redis

    if not ctx.settings.replica_urls:
        return SKIPPED, "REDIS_READ_REPLICA_URLS is empty", {}
    key = ctx.key("replicated")
    ctx.client.set(key, "from the primary")
    for url in ctx.settings.replica_urls:
        extra = {"ssl_ca_certs": ctx.settings.ca_file} if ctx.settings.tls and ctx.settings.ca_file else {}
        replica = redis.from_url(url, decode_responses=True, **extra, **ctx.settings.common())
        try:
            deadline = time.monotonic() + 5
            while replica.get(key) != "from the primary":
                if time.monotonic() > deadline:
                    return FAILED, f"{_safe(url)}: the primary's write did not arrive within 5 s", {}
                time.sleep(0.05)
            try:
                replica.set(ctx.key("on-replica"), "x")
            except redis.ReadOnlyError:
                pass
            else:
                return FAILED, f"{_safe(url)}: accepted a write (not a replica?)", {}
        finally:
            replica.close()
    return OK, f"{len(ctx.settings.replica_urls)} replica URL(s) read the primary's write and refuse writes", {}


def _safe(url: str) -> str:
    """A URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


def readiness(ctx: Context):
    if ctx.settings.cluster_nodes:
        return _cluster_ready(ctx)
    if ctx.settings.sentinels:
        return _sentinels_agree(ctx)
    return SKIPPED, "standalone: no topology to check", {}


def _sentinels_agree(ctx: Context):
    import redis

    answers = {}
    for host, port in ctx.settings.sentinels:
        client = redis.Redis(host=host, port=port, password=ctx.settings.sentinel_password, decode_responses=True,
                             **ctx.settings.tls_kwargs(sentinel=True), **ctx.settings.common())
        try:
            address = client.sentinel_get_master_addr_by_name(ctx.settings.sentinel_master)
            replicas = client.sentinel_slaves(ctx.settings.sentinel_master)
            answers[f"{host}:{port}"] = (tuple(address) if address else None,
                                         sum(1 for replica in replicas if "s_down" not in replica.get("flags", "")))
        except redis.RedisError as exc:
            answers[f"{host}:{port}"] = (f"error: {exc}", 0)
        finally:
            client.close()
    primaries = {answer[0] for answer in answers.values()}
    if len(primaries) != 1 or None in primaries or any(isinstance(p, str) for p in primaries):
        return FAILED, f"the Sentinels disagree about the primary: {answers}", {"sentinels": answers}
    replicas = min(answer[1] for answer in answers.values())
    if replicas < ctx.expect_replicas:
        return FAILED, f"the primary has {replicas} replica(s) up, {ctx.expect_replicas} expected", {}
    (primary,) = primaries
    return OK, (f"{len(answers)} Sentinels agree: primary {primary[0]}:{primary[1]} with {replicas} replica(s) up"), {}


def _cluster_ready(ctx: Context):
    client = ctx.client
    info = client.cluster_info()
    if isinstance(info, dict) and "cluster_state" not in info:     # redis-py may answer per node
        info = next(iter(info.values()))
    state, assigned = info.get("cluster_state"), int(info.get("cluster_slots_assigned", 0))
    ok_slots = int(info.get("cluster_slots_ok", 0))
    nodes = client.cluster_nodes()
    primaries = {node_id for node_id, node in _nodes(nodes).items() if "master" in node["flags"]}
    replicas_of = {primary: 0 for primary in primaries}
    for node in _nodes(nodes).values():
        if "slave" in node["flags"] and node["master"] in replicas_of and "fail" not in node["flags"]:
            replicas_of[node["master"]] += 1
    fewest = min(replicas_of.values()) if replicas_of else 0
    detail = (f"cluster_state {state}, {ok_slots}/{assigned} slots ok of 16384, {len(primaries)} primaries, "
              f"fewest replicas per shard {fewest} ({ctx.expect_replicas} expected)")
    ok = state == "ok" and assigned == 16384 and ok_slots == 16384 and fewest >= ctx.expect_replicas
    return (OK if ok else FAILED), detail, {}


def _nodes(nodes) -> dict:
    """CLUSTER NODES as redis-py parses it ({address: {...}}), keyed by node id."""
    result = {}
    for address, node in nodes.items():
        flags = node.get("flags", "")
        flags = flags if isinstance(flags, str) else ",".join(flags)
        if "master" in flags and not node.get("slots") and "slave" not in flags:
            continue                        # a primary without slots is not a shard
        result[node["node_id"]] = {"flags": flags, "master": node.get("master_id"), "address": address}
    return result


CHECK_FUNCTIONS = {"connection": connection, "authentication": authentication, "basic": basic,
                   "advanced": advanced, "uses": uses, "performance": performance,
                   "replica-reads": replica_reads, "readiness": readiness}


def run(ctx: Context, wanted: list[str], deadline: float) -> list[dict]:
    results = []
    for name, check in CHECK_FUNCTIONS.items():
        if name not in wanted:
            continue
        started = time.monotonic()
        if started > deadline:
            results.append({"check": name, "status": FAILED, "detail": "not run: the time limit is used up"})
            continue
        if name != "connection" and ctx.client is None:
            results.append({"check": name, "status": SKIPPED, "detail": "no connection"})
            continue
        try:
            status, detail, figures = check(ctx)
        except AssertionError as exc:
            status, detail, figures = FAILED, f"{exc}", {}
        except Exception as exc:  # noqa: BLE001 - a check that cannot run fails with the reason
            status, detail, figures = FAILED, f"{type(exc).__name__}: {exc}", {}
        results.append({"check": name, "status": status, "detail": detail,
                        "seconds": round(time.monotonic() - started, 3), **figures})
    return results


def cleanup(ctx: Context) -> None:
    if ctx.client is None or not ctx.keys:
        return
    try:
        for key in sorted(ctx.keys):
            ctx.client.delete(key)
    except Exception:  # noqa: BLE001, S110 - best effort: the keys expire or stay under the verify prefix
        pass
