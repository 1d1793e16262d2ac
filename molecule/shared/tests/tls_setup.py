"""TLS as the scenario's inventory sets it up, for the tests' own clients (redis-cli, redis-py); and a role variable
as the play sees it."""

from __future__ import annotations

import os

# Where the role puts the CA bundle on every host (roles/redis_server/vars/main.yml, _redis_server_tls_dir).
CA_FILE = "/etc/redis-infra/tls/ca.crt"
CERT_FILE = "/etc/redis-infra/tls/server.crt"
KEY_FILE = "/etc/redis-infra/tls/server.key"


def tls_on(variables: dict) -> bool:
    """Whether the instances serve TLS only: redis_server_tls, else the profile's (on in production)."""
    value = variables.get("redis_server_tls")
    if value is not None:
        return bool(value)
    return variables.get("redis_server_profile", "development") == "production"


def cli(engine: str, variables: dict) -> str:
    """The engine's CLI with the flags that reach a TLS-only port from inside a host."""
    command = f"{engine}-cli"
    return f"{command} --tls --cacert {CA_FILE}" if tls_on(variables) else command


def controller_ca() -> str:
    """The private CA's certificate on the controller (redis_server_tls_ca_dir's default for Molecule's
    inventory: beside it, <inventory>-tls)."""
    return os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "inventory-tls", "ca.crt")


def client_kwargs(variables: dict, ca_file: str | None = None) -> dict:
    """redis-py's TLS arguments for a client: inside a host (the host's CA bundle) or on the controller."""
    if not tls_on(variables):
        return {}
    return {"ssl": True, "ssl_ca_certs": ca_file or CA_FILE, "ssl_cert_reqs": "required"}


def role_variable(variables: dict, role: str, name: str):
    """A variable as the play sees it: the inventory's value, else the role's default (its defaults file)."""
    if name in variables:
        return variables[name]
    import yaml

    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", role, "defaults", "main.yml")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)[name]
