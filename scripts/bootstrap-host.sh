#!/usr/bin/env bash
# Install and start what the project needs on this machine (Debian/Ubuntu, as root): the container
# engine, debootstrap for the test images, redis-server for the fast tests, promtool for the alert
# rule tests, prometheus-redis-exporter (oliver006/redis_exporter) for the test that compares the health
# checker's metrics with the exporter's, haproxy for the local proxy's fast test. Safe to run again:
# installs only what is missing and starts the engine only if stopped.
set -euo pipefail

packages=(docker.io debootstrap redis-server redis-tools prometheus prometheus-redis-exporter haproxy python3-venv rsync)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing packages ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  # policy-rc.d 101: the packages' own services (redis-server, prometheus, prometheus-redis-exporter)
  # stay stopped; the tests start the servers they need themselves.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi

if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker
  else
    echo "bootstrap: starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "bootstrap: the Docker engine did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
echo "bootstrap: docker $(docker version --format '{{.Server.Version}}'), $(redis-server --version | cut -d' ' -f3)"
