"""Flags several ``storecast`` commands share, each defined once.

The key a command sends (``storecast forecast``, ``retrain``, ``data append``, ``calendar upload``) comes
from ``--api-key-file PATH`` or ``$STORECAST_API_KEY``, never from the command line (``ps`` and the
shell's history would show it).
"""

from __future__ import annotations

import argparse
import os

from serving.access.key_file import read_key
from serving.settings import boolean

# pipelines.versions.lineage.KEEP_UNKNOWN_ENV, spelled here so that building the parser does not import the
# training stack (pandas): tests/pipelines/cli/test_first_hour.py checks that both are the same
KEEP_UNKNOWN_ENV = "STORECAST_KEEP_UNKNOWN_STORES"


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


API_KEY_ENV = "STORECAST_API_KEY"


def add_api_key(parser: argparse.ArgumentParser, sent_as: str) -> None:
    """``--api-key-file`` of a command that sends a key ``sent_as`` (else ``$STORECAST_API_KEY``)."""
    parser.add_argument("--api-key-file", metavar="PATH",
                        help=f"file holding the key, sent as {sent_as} (default: ${API_KEY_ENV}; the key is never "
                             "given on the command line, where ps shows it)")
    parser.add_argument("--api-key", action=_KeyInArgv, nargs="?", metavar="KEY",
                        help=f"refused: a key never comes from the command line (use ${API_KEY_ENV} or --api-key-file)")


class _KeyInArgv(argparse.Action):
    """``--api-key VALUE`` is refused, naming the ways that keep the key out of ``ps``."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        parser.error(f"--api-key: a key is never taken from the command line (ps and the shell's history show it); "
                     f"use ${API_KEY_ENV} or --api-key-file PATH")


def api_key(args: argparse.Namespace) -> str | None:
    """The key a command sends: ``--api-key-file``, else ``$STORECAST_API_KEY``; None for none. ``SystemExit``
    with one line naming the file or the variable (never the key) when it cannot be used."""
    path = getattr(args, "api_key_file", None)
    return read_key(None if path else os.environ.get(API_KEY_ENV), path, API_KEY_ENV, "--api-key-file")
