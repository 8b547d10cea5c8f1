"""``openbell versions``: the release manifest beside what each host actually runs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer

from openbell.deployments.cli.common import EstateOpt, JsonOpt, Region, command, out

app = typer.Typer()


def read_versions(estate: Any, region: str) -> list[dict[str, Any]]:
    """Per releasable app and host: the manifest's version, the estate's, the ``current``
    link and the version the health endpoint reports (read-only)."""
    from openbell.tasks.apps import health_url
    from openbell.tasks.connectors.http import HttpClient
    from openbell.tasks.connectors.ssh import SshPool
    from openbell.tasks.ledger import Ledger
    from openbell.tasks.release import layout, records
    from openbell.tasks.release.target import releasable

    rows: list[dict[str, Any]] = []
    with Ledger() as ledger:
        manifest = {
            a: records.manifest_version(ledger, region, a) for a in releasable(estate, region)
        }
    pool = SshPool(estate)

    async def health(url: str, target: str) -> str:
        async with HttpClient() as http:
            try:
                answer = await http.get(url, target=target, timeout=3.0, retries=0)
            except Exception as exc:  # shown, not raised: this is a report
                return f"unhealthy ({type(exc).__name__})"
            body = answer.json if isinstance(answer.json, dict) else {}
            return str(body.get("version", "?"))

    try:
        for name in sorted(manifest):
            app_ = estate.app(name)
            for host in app_.hosts:
                if host not in estate.hosts_in(region):
                    continue
                try:
                    res = pool.run(host, layout.read_link(app_.release.root))
                    link = layout.version_of_link(res.stdout) if res.ok else None
                    current = link or f"? ({res.tail(1) or res.exit_status})"
                except Exception as exc:
                    current = f"unreachable ({type(exc).__name__})"
                url = health_url(app_, estate.host(host).address)
                running = asyncio.run(health(url, f"{name}@{host}")) if url else "-"
                want = manifest[name] or app_.expected_version
                rows.append(
                    {
                        "app": name,
                        "host": host,
                        "manifest": manifest[name],
                        "estate": app_.expected_version,
                        "current": current,
                        "running": running,
                        "agrees": current == want and running in (want, "-"),
                    }
                )
    finally:
        pool.close()
    return rows


@command(app)
def versions(region: Region, estate_path: EstateOpt = None, as_json: JsonOpt = False) -> None:
    """The release manifest of a region beside what its hosts run; exit 1 on a mismatch."""
    from rich.table import Table

    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    estate.region(region)
    rows = read_versions(estate, region.lower())
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        table = Table("app", "host", "manifest", "estate", "current", "running", "")
        for r in rows:
            mark = "[green]ok[/]" if r["agrees"] else "[red]MISMATCH[/]"
            table.add_row(
                r["app"],
                r["host"],
                r["manifest"] or "-",
                r["estate"] or "-",
                r["current"],
                r["running"],
                mark,
            )
        out.print(table)
    raise typer.Exit(0 if all(r["agrees"] for r in rows) else 1)
