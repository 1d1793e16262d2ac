#!/usr/bin/env bash
# Build the systemd-capable Debian images the Molecule scenarios and the lab run on.
#
# No container registry is reachable where this project is tested, so the images are made from
# Debian's mirror: debootstrap a minimal root, add what Ansible and systemd need, `docker import` it.
# An image that already exists is skipped; FORCE=1 rebuilds. Users who can pull images do not need
# this: set MOLECULE_IMAGE_DEBIAN12 / MOLECULE_IMAGE_DEBIAN13 to any systemd image with python3.
set -euo pipefail

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="systemd,systemd-sysv,dbus,python3,python3-apt,sudo,procps,iproute2,ca-certificates,gnupg"
# suite:image tag pairs; pass suite names as arguments to build only some.
declare -A TAGS=([bookworm]="redis-infra/debian:12" [trixie]="redis-infra/debian:13")
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)

for cmd in docker debootstrap; do
  command -v "$cmd" >/dev/null || { echo "build-images: '$cmd' is not installed (apt-get install docker.io debootstrap)" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "build-images: the Docker engine is not running (start dockerd)" >&2; exit 1; }

for suite in "${suites[@]}"; do
  tag="${TAGS[$suite]:-}"
  [ -n "$tag" ] || { echo "build-images: unknown suite '$suite' (known: ${!TAGS[*]})" >&2; exit 1; }
  if [ "${FORCE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "build-images: $tag exists, skipped"
    continue
  fi
  root=$(mktemp -d "/var/tmp/redis-infra-$suite.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "build-images: debootstrap $suite into $root"
  debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # A container has no consoles, udev or kernel to set up: masking these keeps boot quick and clean.
  for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
              systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
              systemd-remount-fs.service systemd-firstboot.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
  done
  echo "deb $MIRROR $suite main" > "$root/etc/apt/sources.list"
  rm -f "$root"/etc/apt/sources.list.d/*.sources
  : > "$root/etc/machine-id"
  # Package lists as a real host has them, so that check mode can tell what apt would install.
  chroot "$root" apt-get update -qq >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
  echo "build-images: importing $tag"
  tar -C "$root" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' \
    - "$tag" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "build-images: built $tag"
done
