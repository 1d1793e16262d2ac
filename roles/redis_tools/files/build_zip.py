"""Pack the redis_infra package into a zip whose bytes depend only on the sources.

Fixed timestamps and order make the archive identical from run to run, so that copying it to the
hosts is idempotent; compiled files and caches are left out. OUT_ZIP.b64 holds the same bytes in
base64, the form the redis_files module takes them in. Usage: build_zip.py SOURCE_DIR OUT_ZIP
"""

import base64
import os
import sys
import zipfile


def main(source: str, out: str) -> None:
    parent = os.path.dirname(os.path.abspath(source))
    files = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.join(root, name) for name in names if name.endswith(".py")]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(os.path.relpath(path, parent), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as handle:
                archive.writestr(info, handle.read())
    with open(tmp, "rb") as handle:
        encoded = base64.b64encode(handle.read())
    with open(out + ".b64.tmp", "wb") as handle:
        handle.write(encoded)
    os.replace(tmp, out)
    os.replace(out + ".b64.tmp", out + ".b64")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
