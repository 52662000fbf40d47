"""Settings of a process: every flag also a ``STORECAST_*`` environment variable, every default once.

A process declares its settings as a frozen dataclass deriving from :class:`Settings`, each field made
with :func:`setting` (default, help, parser, extra spellings, help group). Each flag takes its default
from its variable (``Settings.env_prefix`` + the field's name in capitals, or the field's own ``env``);
a flag on the command line wins; an empty variable is unset unless the setting is text.
:meth:`Settings.from_args` returns the settings object, the whole parsed namespace in ``args``.

The two servers derive from :class:`ServerSettings`: :func:`build_parser` puts their flags on top of
KServe's own ``kserve.model_server.parser`` (``--http_port``, ``--grpc_port``, ``--workers``, ...), and
every KServe flag too takes its default from ``STORECAST_<DEST>`` (``STORECAST_MAX_INFLIGHT=32``,
``STORECAST_HTTP_PORT=9000``); their settings hold the parsed KServe flags in ``kserve``. Processes
without KServe (the retrain service, the dashboard) use :func:`settings_parser`, with a prefix of
their own (``STORECAST_RETRAIN_``, ``STORECAST_DASHBOARD_``) so that no variable means two things.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from serving.contract import MAX_DAYS_AHEAD

ENV_PREFIX = "STORECAST_"
S = TypeVar("S", bound="Settings")


def setting(default: Any, help: str, parse: Callable[[str], Any] | None = None, *, flags: tuple[str, ...] = (),
            choices: Iterable[Any] | None = None, env: str | None = None, group: str | None = None,
            switch: bool = False, repeat: bool = False, required: bool = False) -> Any:
    """A settings field: its default, help text, the function turning text into a value, extra spellings.

    ``env``: its variable when not the prefix + name; ``group``: its heading in ``--help``; ``switch``: a
    flag without a value (``--dry-run``; the variable takes true/false); ``repeat``: a flag given once per
    value (a tuple; the variable takes them comma-separated); ``required``: unless its variable is set.
    """
    return field(default=default, metadata={"help": help, "parse": parse, "flags": flags, "group": group,
                                            "choices": tuple(choices) if choices else None, "env": env,
                                            "switch": switch, "repeat": repeat, "required": required})


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


def env_name(dest: str, explicit: str | None = None, prefix: str = ENV_PREFIX) -> str:
    return explicit or prefix + dest.upper()


@dataclass(frozen=True)
class Settings:
    """A process's settings: each field a flag and a variable (see the module docstring)."""

    env_prefix: ClassVar[str] = ENV_PREFIX
    args: argparse.Namespace | None = field(default=None, compare=False, repr=False, metadata={"internal": True})

    @classmethod
    def own_fields(cls) -> list[Field[Any]]:
        return [f for f in fields(cls) if not f.metadata.get("internal")]

    @classmethod
    def env_of(cls, f: Field[Any]) -> str:
        """The variable of a field."""
        return env_name(f.name, f.metadata["env"], cls.env_prefix)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, title: str, defaults: Mapping[str, Any] | None = None,
                      environment: bool = True) -> argparse.ArgumentParser:
        """This class's settings as flags (``--max-inflight`` and ``--max_inflight``), in groups under ``title``.

        ``defaults`` replace fields' defaults (a variable still wins); ``environment=False``: the flags
        alone (a command line tool's, which reads no variables).
        """
        groups = {title: parser.add_argument_group(title)}
        for f in cls.own_fields():
            meta, env = f.metadata, cls.env_of(f)
            heading = meta["group"] or title
            if heading not in groups:
                groups[heading] = parser.add_argument_group(heading)
            dashed, under = "--" + f.name.replace("_", "-"), "--" + f.name
            spellings = list(dict.fromkeys((dashed, under, *meta["flags"])))
            parse = meta["parse"] or _identity
            default = (defaults or {}).get(f.name, f.default if f.default is not MISSING else None)
            text = _env_text(env, meta["parse"] is None) if environment else None
            if text is not None:
                default = _from_env(_env_parser(meta), text, env)
            help_text = (f"{meta['help']} (env {env})" if environment else meta["help"]).replace("%", "%%")
            kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
            if meta["switch"]:
                kwargs["action"] = "store_true"
            else:
                kwargs.update(type=parse, action=_Repeat if meta["repeat"] else "store")
                if meta["choices"]:
                    kwargs["choices"] = meta["choices"]
                if meta["required"] and text is None:
                    kwargs.update(required=True, default=None)
            groups[heading].add_argument(*spellings, **kwargs)
        return parser

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
        """The settings of a parsed command line (``extra``: other fields of a subclass)."""
        values = {f.name: getattr(args, f.name) for f in cls.own_fields() if hasattr(args, f.name)}
        return cls(**values, **extra, args=args)

    @classmethod
    def table(cls) -> list[tuple[str, str, Any, str]]:
        """(flag, environment variable, default, help) of each own setting: the README's table."""
        return [("--" + f.name.replace("_", "-"), cls.env_of(f), f.default, f.metadata["help"])
                for f in cls.own_fields()]


@dataclass(frozen=True)
class ServerSettings(Settings):
    """What every storecast server takes besides KServe's own flags."""

    host: str = setting("127.0.0.1", "address HTTP and gRPC listen on: loopback unless given; any other address "
                        "(0.0.0.0: every interface) needs an auth file (--auth-file) or STORECAST_API_KEY")
    max_inflight: int = setting(64, "inference requests served at once (REST and gRPC together), counted per "
                                "caller: at the limit a caller holding its share (the limit / callers in flight) or "
                                "more is refused at once with 503 + Retry-After / UNAVAILABLE naming its count, others "
                                "still get in (0: unbounded)", int)
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

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
        """The settings, every other flag of the namespace (KServe's) in ``kserve``."""
        ours = {f.name for f in cls.own_fields()}
        return super().from_args(args, kserve={k: v for k, v in vars(args).items() if k not in ours}, **extra)


def build_parser(settings: type[ServerSettings], prog: str, description: str, title: str,
                 defaults: Mapping[str, Any] | None = None,
                 kserve_parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """KServe's ModelServer flags plus the component's, with its defaults and the ``STORECAST_*`` variables."""
    if kserve_parser is None:
        from kserve import model_server

        kserve_parser = model_server.parser
    parser = settings_parser(settings, prog, description, title, defaults, parents=(kserve_parser,))
    own = {f.name for f in settings.own_fields()}
    parser.set_defaults(**{k: v for k, v in (defaults or {}).items() if k not in own})
    apply_env(parser, skip=own)  # last: STORECAST_<DEST> wins over the component's defaults of KServe's flags
    return parser


def settings_parser(settings: type[Settings], prog: str, description: str, title: str,
                    defaults: Mapping[str, Any] | None = None,
                    parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """The settings' flags (after those of ``parents``), each defaulting to its variable; no KServe."""
    parser = argparse.ArgumentParser(prog=prog, parents=list(parents), description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    return settings.add_arguments(parser, title, defaults)


def early_parser(settings: type[Settings], prog: str) -> argparse.ArgumentParser:
    """Only the component's own flags, without KServe (read before KServe is imported)."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    return settings.add_arguments(parser, "early")


def apply_env(parser: argparse.ArgumentParser, skip: Iterable[str] = ()) -> None:
    """Every flag's default from ``STORECAST_<DEST>`` if set (KServe's flags; ``skip``: dests left alone)."""
    skipped = {"help", *skip}
    for action in parser._actions:  # the public API has no other way to walk a parser's flags
        if not action.option_strings or action.dest in skipped:
            continue
        switch = action.nargs == 0  # store_true flags
        text = _env_text(env_name(action.dest), action.type is None and not switch)
        if text is None:
            continue
        parse = boolean if switch else action.type or _identity
        parser.set_defaults(**{action.dest: _from_env(parse, text, env_name(action.dest))})


class _Repeat(argparse.Action):
    """A flag given once per value: the command line's values (a tuple, in order) replace the default."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (*(() if current is self.default else current or ()), values))


def _env_text(name: str, text_setting: bool) -> str | None:
    """The variable's text; None when unset (or empty, for a setting that is not text)."""
    text = os.environ.get(name)
    if text is None or (not text.strip() and not text_setting):
        return None
    return text


def _env_parser(meta: Mapping[str, Any]) -> Callable[[str], Any]:
    """How a field's variable is read: as its flag, true/false for a switch, comma-separated for a repeat."""
    parse = meta["parse"] or _identity
    if meta["switch"]:
        return boolean
    if meta["repeat"]:
        return lambda text: tuple(parse(p.strip()) for p in text.split(",") if p.strip())
    if meta["choices"]:
        return lambda text: _choice(parse(text), meta["choices"])
    return parse


def _choice(value: Any, choices: tuple[Any, ...]) -> Any:
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    return value


def _from_env(parse: Callable[[str], Any], text: str, name: str) -> Any:
    try:
        return parse(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"{name}={text!r}: {exc}") from None


def _identity(text: str) -> str:
    return text
