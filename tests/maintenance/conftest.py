"""The backup fixtures (a real redis-server with the backup user, the backup tool's config) serve the drill."""

from tests.backup.conftest import make_env  # noqa: F401 - a fixture, used by name
