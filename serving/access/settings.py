"""The access settings of a server: flags, their ``STORECAST_*`` environment variables, and ``Access`` from them.

A server adds them to its parser with ``add_access_arguments(parser)`` and builds the mechanism with
``build_access(AccessSettings.from_args(args))``; ``check_exposure(settings, host)`` refuses to run
without an auth file on anything but loopback. ``UVICORN_PROXY_OPTIONS`` turns uvicorn's own
``x-forwarded-for`` handling off (it trusts 127.0.0.1 whatever ``--trusted-proxies`` says): the client
address is the access mechanism's to resolve, from the proxies named, and the audit line keeps the
socket's address beside it.

Flags (each defaults to its environment variable; the README's settings table says the same):
``--auth-file`` (``STORECAST_AUTH_FILE``), ``--rate-limit-storage`` (``STORECAST_RATE_LIMIT_STORAGE``,
``memory://`` or ``redis://host:port[/db]``), ``--oidc-issuer``, ``--oidc-audience``, ``--oidc-jwks-url``,
``--oidc-jwks-ca-file``, ``--oidc-jwks-token-file`` (``STORECAST_OIDC_*``) and ``--trusted-proxies``
(``STORECAST_TRUSTED_PROXIES``). See ``add_access_arguments`` for what each means.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import logging
import os
from dataclasses import dataclass

from serving.access.admission import Access
from serving.access.auth_file import AuthConfig, AuthFileWatcher, IdentityEntry, Tier
from serving.access.oidc import OIDCVerifier
from serving.access.ratelimit import RateLimiter

log = logging.getLogger("storecast.auth")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# uvicorn.Config / uvicorn.run keywords: no forwarded-header trust of its own (serving.access.admission resolves
# x-forwarded-for from --trusted-proxies, none by default, and keeps the socket's address for the audit line)
UVICORN_PROXY_OPTIONS = {"proxy_headers": False, "forwarded_allow_ips": ""}


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class AccessSettings:
    """What the flags say (see the module docstring)."""

    auth_file: str | None = None
    rate_limit_storage: str = "memory://"
    oidc_issuer: str | None = None
    oidc_audience: tuple[str, ...] = ()
    oidc_jwks_url: str | None = None
    oidc_jwks_ca_file: str | None = None
    oidc_jwks_token_file: str | None = None
    trusted_proxies: str = ""
    reload_seconds: float = 2.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AccessSettings:
        """The flags, ``--auth-file`` falling back to ``STORECAST_AUTH_FILE``."""
        audience = getattr(args, "oidc_audience", None) or ""
        return cls(auth_file=args.auth_file or _env("STORECAST_AUTH_FILE"),
                   rate_limit_storage=args.rate_limit_storage or "memory://",
                   oidc_issuer=args.oidc_issuer,
                   oidc_audience=tuple(a.strip() for a in audience.split(",") if a.strip()),
                   oidc_jwks_url=args.oidc_jwks_url, oidc_jwks_ca_file=args.oidc_jwks_ca_file,
                   oidc_jwks_token_file=args.oidc_jwks_token_file, trusted_proxies=args.trusted_proxies or "")

    @classmethod
    def of(cls, settings: object) -> AccessSettings:
        """The access settings of a server's settings: its parsed flags when its parser has the access flags
        (``settings.args``), else the ``STORECAST_*`` environment."""
        args = getattr(settings, "args", None)
        return cls.from_args(args) if args is not None and hasattr(args, "auth_file") else cls.from_env()

    @property
    def open(self) -> bool:
        """No auth file and no ``STORECAST_API_KEY``: every caller anonymous (loopback use only)."""
        return self.auth_file is None and not _env("STORECAST_API_KEY")

    @classmethod
    def from_env(cls) -> AccessSettings:
        """The settings from the environment alone (what the flags default to)."""
        parser = argparse.ArgumentParser(add_help=False)
        add_access_arguments(parser)
        return cls.from_args(parser.parse_args([]))


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the access flags (defaults from the ``STORECAST_*`` environment variables)."""
    g = parser.add_argument_group("access (authentication, rate limits)")
    g.add_argument("--auth-file", default=None,  # STORECAST_AUTH_FILE is read by AccessSettings.from_args
                   help="YAML tiers and identities, re-read when it changes (env STORECAST_AUTH_FILE); without it "
                        "every caller is anonymous with every permission but admin, allowed on loopback only")
    g.add_argument("--rate-limit-storage", default=_env("STORECAST_RATE_LIMIT_STORAGE") or "memory://",
                   help="memory:// (per replica, default) or redis://host:port[/db] to share one limit across "
                        "replicas (env STORECAST_RATE_LIMIT_STORAGE)")
    g.add_argument("--oidc-issuer", default=_env("STORECAST_OIDC_ISSUER"),
                   help="accept OIDC bearer tokens (Knative sender identity) of this issuer "
                        "(env STORECAST_OIDC_ISSUER)")
    g.add_argument("--oidc-audience", default=_env("STORECAST_OIDC_AUDIENCE"),
                   help="audience(s), comma-separated, the tokens must be issued for (env STORECAST_OIDC_AUDIENCE)")
    g.add_argument("--oidc-jwks-url", default=_env("STORECAST_OIDC_JWKS_URL"),
                   help="the issuer's JWKS URL (default: from its /.well-known/openid-configuration; "
                        "env STORECAST_OIDC_JWKS_URL)")
    g.add_argument("--oidc-jwks-ca-file", default=_env("STORECAST_OIDC_JWKS_CA_FILE"),
                   help="CA bundle for an https JWKS URL (env STORECAST_OIDC_JWKS_CA_FILE)")
    g.add_argument("--oidc-jwks-token-file", default=_env("STORECAST_OIDC_JWKS_TOKEN_FILE"),
                   help="file with a bearer token sent when fetching the JWKS (env STORECAST_OIDC_JWKS_TOKEN_FILE)")
    g.add_argument("--trusted-proxies", default=_env("STORECAST_TRUSTED_PROXIES") or "",
                   help="comma-separated CIDRs of the proxies in front (ingress gateway, activator, queue-proxy): "
                        "from them, the client address of anonymous limits is the right-most x-forwarded-for entry "
                        "outside these networks (default none: the socket peer, x-forwarded-for ignored; env "
                        "STORECAST_TRUSTED_PROXIES)")


def legacy_config(key: str) -> AuthConfig:
    """The single shared key of earlier releases (``STORECAST_API_KEY``) as an auth file of one identity:
    ``api-key``, allowed forecast and refresh, no rate limit; nobody else (no anonymous tier)."""
    tier = Tier("api-key", None, None, None, frozenset({"forecast", "refresh"}))
    entry = IdentityEntry("api-key", "api-key", (hashlib.sha256(key.encode()).digest(),))
    return AuthConfig({"api-key": tier}, (entry,), source="STORECAST_API_KEY")


def is_loopback(host: str) -> bool:
    """Whether a listening address reaches this machine only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: AccessSettings, host: str) -> None:
    """Refuse (ValueError) to serve without an auth file (or a key) on anything but a loopback address."""
    if settings.open and not is_loopback(host):
        raise ValueError(f"--auth-file is required to listen on {host or 'every address'} (without it every caller "
                         "is anonymous, which is for loopback only: --host 127.0.0.1)")


def build_access(settings: AccessSettings) -> Access:
    """The access mechanism of a server (its auth file watched for changes in a daemon thread)."""
    if settings.oidc_issuer and not settings.auth_file:
        raise ValueError("--oidc-issuer needs --auth-file (OIDC subjects map to identities of the file)")
    oidc = None
    if settings.oidc_issuer:
        oidc = OIDCVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url,
                            ca_file=settings.oidc_jwks_ca_file, token_file=settings.oidc_jwks_token_file)
    config: AuthFileWatcher | AuthConfig | None = None
    if settings.auth_file:
        config = AuthFileWatcher(settings.auth_file, interval=settings.reload_seconds).start()
    elif _env("STORECAST_API_KEY"):
        config = legacy_config(_env("STORECAST_API_KEY"))
        log.warning("access: STORECAST_API_KEY without --auth-file: one identity 'api-key' (forecast, refresh), no "
                    "anonymous callers; use an auth file (storecast auth add-key) for identities and limits")
    access = Access(config, limiter=RateLimiter(settings.rate_limit_storage), oidc=oidc,
                    trusted_proxies=settings.trusted_proxies)
    log.info("access: %s; rate limits %s; OIDC %s", access.config.summary(), access.limiter.describe(),
             f"issuer {settings.oidc_issuer}, audience {','.join(settings.oidc_audience)}" if oidc else "off")
    return access
