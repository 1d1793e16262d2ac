"""Acceptance test of one application's connection: `python3 -m redis_infra.verify --env-file FILE`.

The counterpart of the platform guide's `npm run test:redis`, run with the env file that
playbooks/app_settings.yml wrote for the application (docs/applications.md): it connects the way the
application does (REDIS_URL, or the Sentinels, or the cluster's nodes, with TLS as the file says) and
runs, as the application's user, each check with a clear pass or fail: connection, authentication,
basic and advanced operations, the guide's six uses, a short latency and throughput measurement
against stated thresholds, reads on the replica URLs, and the topology's readiness (Sentinels agree,
every slot covered, each shard or primary with its replicas). It touches only keys under its own
prefix and deletes them, and every wait is bounded. See docs/verify.md.
"""

from __future__ import annotations

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
CHECKS = ("connection", "authentication", "basic", "advanced", "uses", "performance", "replica-reads", "readiness")
