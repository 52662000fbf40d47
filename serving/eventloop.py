"""KServe's ``--event_loop`` honoured in a single-process server.

KServe documents ``--event_loop auto`` (its default) as "use uvloop if available", but a server with
one worker runs ``asyncio.run`` under the default policy, so the flag only reaches uvicorn's worker
processes. ``install(choice)`` sets the policy before ``ModelServer.start``: uvloop's C event loop
and TCP transports cost a fraction of asyncio's per request (and per shed request).
"""

from __future__ import annotations

import asyncio


def install(choice: str = "auto") -> str:
    """Use uvloop for ``auto`` (when installed) or ``uvloop``; returns the loop in use."""
    if choice not in ("auto", "uvloop"):
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # ModelServer.start asks for a current loop first
    return "uvloop"
