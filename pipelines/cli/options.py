"""Flags several ``storecast`` commands share, each defined once."""

from __future__ import annotations

import argparse
import os

from pipelines.versions.lineage import KEEP_UNKNOWN_ENV
from serving.settings import boolean


def keep_unknown_default() -> bool:
    """``$STORECAST_KEEP_UNKNOWN_STORES`` (true/false, 1/0, yes/no, on/off; unset: false)."""
    value = os.environ.get(KEEP_UNKNOWN_ENV, "").strip()
    try:
        return boolean(value) if value else False
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"storecast: {KEEP_UNKNOWN_ENV}: {exc}") from None


def add_keep_unknown(parser: argparse.ArgumentParser, help_text: str, from_env: bool = True) -> None:
    """``--keep-unknown-stores``: keep rows naming stores the version does not hold (``lineage.UnknownStores``);
    its default is ``$STORECAST_KEEP_UNKNOWN_STORES`` unless ``from_env`` is false (the command reads it itself)."""
    parser.add_argument("--keep-unknown-stores", action="store_true",
                        default=keep_unknown_default() if from_env else None,
                        help=f"{help_text} (env {KEEP_UNKNOWN_ENV})")
