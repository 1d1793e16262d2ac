"""Host-side tools of redis-infra: the health checker and the backup tool share this package."""

__version__ = "0.1.0"
