#!/usr/bin/env bash
# ansible-test sanity on what the collection ships: builds the artifact, installs it into a scratch
# ansible_collections/ tree (ansible-test runs only inside one), adds tests/sanity/ (the ignore file),
# and runs every sanity test in its own virtualenv (--venv, requirements from PyPI).
# What the ignore file skips, and why: the README ("Tests").
#   scripts/sanity.sh [ansible-test options, e.g. --test validate-modules]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON_VERSION:-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$root/scripts/install-collection.sh" "$work" >/dev/null
collection=$work/ansible_collections/redis_infra/redis
mkdir -p "$collection/tests"
cp -r "$root/tests/sanity" "$collection/tests/"
# ansible-test fetches a pip bootstrap script from ci-files.testing.ansible.com, which a machine that
# reaches only PyPI cannot: where none is cached, put one that starts from Python's bundled pip.
pip_version=$(python3 - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(python_requirements.get_venv_packages)).group(1))
PY
)
cache=~/.ansible/test/cache/get_pip_${pip_version//./_}.py
if [ -n "$pip_version" ] && [ ! -s "$cache" ]; then
  mkdir -p "$(dirname "$cache")"
  cat >"$cache" <<'PY'
"""Stands in for get-pip.py: bootstraps Python's bundled pip, then installs what ansible-test asks for."""
import ensurepip
import os
import runpy
import sys

ensurepip.bootstrap()
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
    args = ["--cert", "/etc/ssl/certs/ca-certificates.crt", *args]
sys.argv = ["pip", "install", *args]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
PY
fi
cd "$collection"
ansible-test sanity --venv --python "$python" --color no "$@"
