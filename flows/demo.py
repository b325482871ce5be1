"""``make demo``: the main job on embedded defaults, end to end."""

from __future__ import annotations

from collections.abc import Callable

from flows.demo_environment import DEMO_OLD_VERSION, demo_environment, seed_sample_agents
from tasks.letta_api import LettaClient
from tasks.letta_postgres import alembic_revision, ensure_pgvector


def run_demo(log: Callable[[str], None] = print) -> dict:
    with demo_environment(DEMO_OLD_VERSION, log=log) as env:
        with LettaClient(env.server) as client:
            agents = seed_sample_agents(client)
            health = client.health()
        lines = [
            "letta-ops demo",
            f"  PostgreSQL   127.0.0.1:{env.postgres.port}  pgvector "
            f"{ensure_pgvector(env.database)}",
            f"  Letta        {env.server.base_url}  {health['status']} version "
            f"{health['version']}  alembic {alembic_revision(env.database)}",
            f"  S3 (moto)    {env.s3_endpoint}",
            f"  agents       {len(agents)}: " + ", ".join(a["name"] for a in agents),
        ]
        return {
            "ok": health.get("status") == "ok" and health.get("version") == DEMO_OLD_VERSION,
            "health": health,
            "agents": [{"id": a["id"], "name": a["name"]} for a in agents],
            "text": "\n".join(lines),
        }
