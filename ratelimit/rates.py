"""Rates and sizes as people write them in config files: ``"50MB/s"``, ``"500MiB/s"``,
``"100/s"``, ``"1.5GB/s"``, ``"unlimited"``; ``"4MiB"``.

Decimal units are powers of 1000 (``MB`` = 10**6 bytes), binary units powers of 1024
(``MiB`` = 2**20). A bare number or SI prefix counts things (``"100/s"``, ``"10k/s"``: requests).
A lower-case ``b`` would mean bits and is refused rather than guessed. ``"unlimited"``, ``"0"``
and any rate of zero mean no limit: :func:`parse_rate` returns None.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_rate", "parse_rate", "parse_size"]

_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_UNLIMITED = frozenset({"unlimited", "none", "off", "inf", "infinite"})
_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE](?P<exp>[+-]?[0-9]+))?")
_SUFFIX = re.compile(r"\s*/\s*(?:s|sec|second)\s*$", re.IGNORECASE)
_HELP = "units: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"


def _quantity(body: str, text: str, what: str, example: str) -> float:
    """``body`` (``text`` without its ``/s``) as a non-negative number of units."""
    body = body.strip()
    text = text.strip()
    match = _QUANTITY.match(body)
    if match is None:
        raise ValueError(f"{what} {text!r} does not start with a number (e.g. {example!r})")
    unit = body[match.end() :].strip()
    if unit not in _UNITS:
        hint = ""
        if unit.lower().endswith("b") and not unit.endswith("B"):
            hint = " (a lower-case 'b' would be bits; limits are in bytes: write 'B')"
        raise ValueError(f"{what} {text!r}: unknown unit {unit!r}{hint}; {_HELP}")
    value = float(match.group(0)) * _UNITS[unit]
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is too large")
    return value


def parse_rate(value: str | float | None) -> float | None:
    """``"50MB/s"`` -> 50e6, ``"500MiB/s"`` -> 524288000.0, ``"100/s"`` -> 100.0;
    ``"unlimited"``, ``"0"``, ``0``, ``None`` -> None (no limit).

    Numbers are taken as already per second. Raises ValueError with the reason otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"a rate must be a string like '50MB/s' or a number, not {value!r}")
    if isinstance(value, int | float):
        if math.isnan(value) or value < 0:
            raise ValueError(f"a rate cannot be negative or NaN: {value!r}")
        return None if value == 0 or math.isinf(value) else float(value)
    text = value.strip()
    if not text:
        raise ValueError("rate is empty; write e.g. '50MB/s', '100/s' or 'unlimited'")
    if text.lower() in _UNLIMITED or text == "0":
        return None
    if text.startswith("-"):
        raise ValueError(f"rate {text!r} is negative; write 'unlimited' (or 0) for no limit")
    suffix = _SUFFIX.search(text)
    if suffix is None:
        raise ValueError(f"rate {text!r} needs a per-second suffix, e.g. '50MB/s' or '100/s'")
    rate = _quantity(text[: suffix.start()], text, "rate", "50MB/s")
    return rate or None


def parse_size(value: str | float) -> int:
    """``"4MiB"`` -> 4194304, ``"1.5MB"`` -> 1500000, ``"64k"`` -> 64000, ``4096`` -> 4096."""
    if isinstance(value, bool):
        raise ValueError(f"a size must be a string like '4MiB' or a number, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a size must be a finite number >= 0, not {value!r}")
        return round(value)
    if value.strip().startswith("-"):
        raise ValueError(f"size {value.strip()!r} is negative")
    if _SUFFIX.search(value):
        raise ValueError(f"size {value.strip()!r} is a rate; a size has no '/s'")
    return round(_quantity(value, value, "size", "4MiB"))


def format_rate(rate: float | None, unit: str = "B") -> str:
    """For display, the inverse of :func:`parse_rate`: ``50e6`` -> ``"50MB/s"``,
    ``524288000`` -> ``"500MiB/s"``, ``None`` -> ``"unlimited"``; ``unit=""`` for counts."""
    if rate is None:
        return "unlimited"
    text = f"{rate:.6g}{unit}/s"
    for prefix, factor in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K" if unit else "k", 1000)):
        if rate >= factor:
            text = f"{rate / factor:.6g}{prefix}{unit}/s"
            break
    if unit:
        for prefix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if rate >= factor and (rate / factor).is_integer():
                binary = f"{rate / factor:g}{prefix}{unit}/s"
                return binary if len(binary) < len(text) else text
    return text
