"""Facts about addresses that the settings and the server share."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): reachable from this machine
    only. Anything else, including ``0.0.0.0``, ``::`` and a host name, counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host_pattern(pattern: str) -> str:
    """``pattern`` in lower case, or :class:`ValueError` naming what is wrong with it."""
    text = pattern.strip().lower()
    if not text or ("*" in text and text != "*" and not (
            text.startswith("*.") and "*" not in text[1:] and len(text) > 2)):
        raise ValueError(
            f"allowed host {pattern!r}: expected a host name, '*.example.com' (its subdomains) "
            "or '*' (any)"
        )
    return text
