"""``python -m openbell.lab.venue --estate PATH``: run the venue alone until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path

from openbell.lab.faults import FaultBook
from openbell.lab.venue.server import FixVenue
from openbell.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    """Run the venue alone until interrupted: ``python -m openbell.lab.venue --estate PATH``."""
    from openbell.runbooks.loader import load_estate

    parser = argparse.ArgumentParser(
        prog="python -m openbell.lab.venue", description="The lab's FIX venue (session layer)."
    )
    parser.add_argument(
        "--estate", type=Path, default=None, help="estate YAML (default: OPENBELL_ESTATE)"
    )
    parser.add_argument(
        "--faults",
        type=Path,
        default=None,
        help="fault book (default: OPENBELL_HOME/lab/faults.json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    estate = load_estate(args.estate)
    book = FaultBook(args.faults or get_settings().lab_dir / "faults.json")

    async def serve() -> None:
        venue = FixVenue(estate, book)
        await venue.start()
        try:
            await asyncio.Event().wait()
        finally:
            await venue.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
