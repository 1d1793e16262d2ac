"""The health checker as the tests reach it: from inside a Redis host's container, on 127.0.0.1."""

from __future__ import annotations

import base64
import shlex

PORT = 9122


def script(variables, path):
    """Python that prints the status and the body of an HTTP GET on the checker, run inside the container: over
    https with the host's CA and with basic auth when the scenario serves the checker that way (it is scraped
    from a monitoring host). `variables`: the host's inventory variables."""
    tls = bool(variables.get("redis_health_tls_server_certificate"))
    users = variables.get("redis_health_basic_auth_users") or {}
    auth = ""
    if users:
        user, password = sorted(users.items())[0]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        auth = f"req.add_header('Authorization', 'Basic {token}')\n"
    return (
        "import ssl, sys, urllib.request, urllib.error\n"
        f"req = urllib.request.Request('{'https' if tls else 'http'}://127.0.0.1:{PORT}{path}')\n"
        + auth
        + f"ctx = ssl.create_default_context(cafile='/etc/redis-infra/tls/ca.crt') if {tls} else None\n"
        "try:\n"
        "    r = urllib.request.urlopen(req, timeout=5, context=ctx)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )


def get(host, path):
    """(status, body) of an HTTP GET on the checker, from inside the container (script() says how)."""
    result = host.run(f"python3 -c {shlex.quote(script(host.ansible.get_variables(), path))}")
    assert result.rc == 0, result.stderr
    status, _, body = result.stdout.partition("\n")
    return int(status), body
