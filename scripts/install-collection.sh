#!/usr/bin/env bash
# Builds the collection from this checkout and installs it into DEST, which it empties first, the way a
# user installs it: `scripts/install-collection.sh DEST`, then ANSIBLE_COLLECTIONS_PATH=DEST. Its
# dependencies (ansible.posix, community.general) come with the ansible package: nothing is downloaded.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:?usage: scripts/install-collection.sh DEST}
galaxy=${ANSIBLE_GALAXY:-ansible-galaxy}
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# Not the checkout's ansible.cfg, which adds the checkout itself to the collection paths.
printf '[defaults]\n' > "$build/ansible.cfg"
export ANSIBLE_CONFIG=$build/ansible.cfg
"$galaxy" collection build --force --output-path "$build/out" "$root" >/dev/null
rm -rf "$dest"
mkdir -p "$dest"
"$galaxy" collection install --offline -p "$dest" "$build"/out/redis_infra-redis-*.tar.gz 2>&1 \
  | grep -v 'is not part of the configured Ansible collections paths' || true
test -f "$dest/ansible_collections/redis_infra/redis/MANIFEST.json"
echo "install-collection: redis_infra.redis installed into $dest"
