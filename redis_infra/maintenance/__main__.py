"""`python3 -m redis_infra.maintenance`: see redis_infra/maintenance/cli.py and docs/maintenance.md."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
