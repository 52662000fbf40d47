"""Settings of a server: every flag also a ``STORECAST_*`` environment variable, every default once.

A component declares its settings as a frozen dataclass deriving from :class:`ServerSettings`,
each field made with :func:`setting` (default, help, parser, extra spellings). :func:`build_parser`
puts them on top of KServe's own ``kserve.model_server.parser`` (``--http_port``, ``--grpc_port``,
``--workers``, ...), and every flag of the result, KServe's included, takes its default from
``STORECAST_<DEST>`` when that variable is set (``STORECAST_MAX_INFLIGHT=32``,
``STORECAST_HTTP_PORT=9000``); a flag on the command line wins. :meth:`ServerSettings.from_args`
returns the settings object, holding the parsed KServe flags in ``kserve``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from serving.contract import MAX_DAYS_AHEAD

ENV_PREFIX = "STORECAST_"
S = TypeVar("S", bound="ServerSettings")


def setting(default: Any, help: str, parse: Callable[[str], Any] | None = None, *, flags: tuple[str, ...] = (),
            choices: Iterable[Any] | None = None, env: str | None = None) -> Any:
    """A settings field: its default, help text, the function turning text into a value, extra spellings."""
    return field(default=default, metadata={"help": help, "parse": parse, "flags": flags,
                                            "choices": tuple(choices) if choices else None, "env": env})


def boolean(text: str | bool) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off``."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def env_name(dest: str, explicit: str | None = None) -> str:
    return explicit or ENV_PREFIX + dest.upper()


@dataclass(frozen=True)
class ServerSettings:
    """What every storecast server takes besides KServe's own flags."""

    host: str = setting("0.0.0.0", "address HTTP and gRPC listen on (KServe's own servers always use every "
                        "interface); 127.0.0.1 for loopback only")
    max_inflight: int = setting(64, "inference requests served at once (REST and gRPC together); more are "
                                "refused at once with 503 + Retry-After / UNAVAILABLE (0: unbounded)", int)
    max_inflight_rows: int = setting(1_000_000, "rows (store-days) of large requests (over 4,096 rows) evaluated and "
                                     "encoded at once; more wait their turn, a request larger than this runs "
                                     "alone; small requests never wait (0: unbounded)", int)
    row_wait_seconds: float = setting(30.0, "longest a large request waits for --max-inflight-rows before a "
                                      "503 + Retry-After", float)
    max_body_bytes: int = setting(32 << 20, "largest request body (after gzip decoding) and gRPC message", int)
    max_days_ahead: int = setting(MAX_DAYS_AHEAD, "furthest a request may reach past the version's last day "
                                  "of data, in days", int)
    access_log: bool = setting(True, "one log line per request (both protocols)", boolean)
    doors: str = setting("", "comma-separated module:factory names of doors (authentication, rate limits) "
                         "asked before every request on REST and gRPC")
    kserve: Mapping[str, Any] = field(default_factory=dict, metadata={"internal": True})
    args: argparse.Namespace | None = field(default=None, compare=False, metadata={"internal": True})

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def own_fields(cls) -> list[Any]:
        return [f for f in fields(cls) if not f.metadata.get("internal")]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, title: str) -> argparse.ArgumentParser:
        """This class's settings as flags (``--max-inflight`` and ``--max_inflight``), env defaults applied."""
        group = parser.add_argument_group(title)
        for f in cls.own_fields():
            meta = f.metadata
            dashed, under = "--" + f.name.replace("_", "-"), "--" + f.name
            spellings = list(dict.fromkeys((dashed, under, *meta["flags"])))
            parse = meta["parse"] or _identity
            default = f.default if f.default is not MISSING else None
            text = os.environ.get(env_name(f.name, meta["env"]))
            if text is not None:
                default = _from_env(parse, text, f.name, meta["env"])
            help_text = f"{meta['help']} (env {env_name(f.name, meta['env'])})".replace("%", "%%")
            kwargs: dict[str, Any] = {"dest": f.name, "default": default, "type": parse, "help": help_text}
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            group.add_argument(*spellings, **kwargs)
        return parser

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace) -> S:
        ours = {f.name for f in cls.own_fields()}
        values = {name: getattr(args, name) for name in ours if hasattr(args, name)}
        rest = {k: v for k, v in vars(args).items() if k not in ours}
        return cls(**values, kserve=rest, args=args)

    @classmethod
    def table(cls) -> list[tuple[str, str, Any, str]]:
        """(flag, environment variable, default, help) of each own setting: the README's table."""
        return [("--" + f.name.replace("_", "-"), env_name(f.name, f.metadata["env"]), f.default, f.metadata["help"])
                for f in cls.own_fields()]


def build_parser(settings: type[ServerSettings], prog: str, description: str, title: str,
                 defaults: Mapping[str, Any] | None = None,
                 kserve_parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """KServe's ModelServer flags plus the component's, with its defaults and the ``STORECAST_*`` variables."""
    if kserve_parser is None:
        from kserve import model_server

        kserve_parser = model_server.parser
    parser = argparse.ArgumentParser(prog=prog, parents=[kserve_parser], description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    settings.add_arguments(parser, title)
    # after add_arguments: an argument's own default would win over an earlier set_defaults (the component's
    # --doors default was lost that way); apply_env last, so STORECAST_* still wins
    parser.set_defaults(**dict(defaults or {}))
    apply_env(parser)
    return parser


def early_parser(settings: type[ServerSettings], prog: str) -> argparse.ArgumentParser:
    """Only the component's own flags, without KServe (read before KServe is imported)."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    return settings.add_arguments(parser, "early")


def apply_env(parser: argparse.ArgumentParser) -> None:
    """Every flag's default from ``STORECAST_<DEST>`` if set (KServe's flags too)."""
    for action in parser._actions:  # the public API has no other way to walk a parser's flags
        if not action.option_strings or action.dest in ("help",):
            continue
        text = os.environ.get(env_name(action.dest))
        if text is None:
            continue
        if action.nargs == 0:  # store_true flags
            parser.set_defaults(**{action.dest: boolean(text)})
        else:
            parser.set_defaults(**{action.dest: _from_env(action.type or _identity, text, action.dest)})


def _from_env(parse: Callable[[str], Any], text: str, dest: str, explicit: str | None = None) -> Any:
    try:
        return parse(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"{env_name(dest, explicit)}={text!r}: {exc}") from None


def _identity(text: str) -> str:
    return text
