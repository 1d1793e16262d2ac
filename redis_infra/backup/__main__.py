"""`python3 -m redis_infra.backup`: see redis_infra/backup/cli.py and docs/backup.md."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
