"""``python -m openbell.lab.run --estate PATH``: run the lab of an estate in the foreground.

Every component (SSH hosts, OMS databases, feeds, FIX venue) runs in this one asyncio
process until SIGTERM or Ctrl-C. ``lab.supervisor.up()`` starts this detached; run it by
hand to watch the log on the terminal::

    OPENBELL_HOME=./.openbell .venv/bin/python -m openbell.lab.run --estate runbooks/lab.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("openbell.lab.run")


def main(argv: list[str] | None = None) -> int:
    """Run the lab; the exit status (0 stopped cleanly, 1 failed, 2 bad estate)."""
    parser = argparse.ArgumentParser(prog="openbell.lab.run", description="Run the openbell lab.")
    parser.add_argument(
        "--estate",
        type=Path,
        default=None,
        help="estate YAML (default: OPENBELL_ESTATE or runbooks/lab.yaml)",
    )
    parser.add_argument("--home", type=Path, default=None, help="OPENBELL_HOME for this lab")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.home:
        os.environ["OPENBELL_HOME"] = str(args.home.expanduser().resolve())
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

    from openbell.errors import EstateError
    from openbell.lab.paths import LabError, LabPaths, pid_alive, read_pid
    from openbell.lab.supervisor import LAB_NEEDLE, serve
    from openbell.runbooks.loader import load_estate
    from openbell.settings import get_settings

    get_settings.cache_clear()
    paths = LabPaths.of()
    estate_file = (args.estate or get_settings().estate).expanduser().resolve()
    try:
        estate = load_estate(estate_file)
    except EstateError as exc:
        log.error("%s", exc)
        return 2
    other = read_pid(paths.pid_file)
    if other and other != os.getpid() and pid_alive(other, LAB_NEEDLE):
        log.error("another lab (pid %d) already runs in %s", other, paths.root)
        return 1
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.pid_file.write_text(f"{os.getpid()}\n")
    log.info("lab starting (pid %d): %s, home %s", os.getpid(), estate_file, paths.home)
    try:
        asyncio.run(serve(estate, estate_file, paths))
    except LabError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if read_pid(paths.pid_file) == os.getpid():
            paths.pid_file.unlink(missing_ok=True)
    log.info("lab stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
