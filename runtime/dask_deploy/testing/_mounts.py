"""Volumes for the stand-ins, which run tasks and pods as host processes without a mount
namespace: a path inside the container is reached by rewriting it to the host folder behind it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

#: A path as a whole word: not preceded or followed by more of a file name.
_PATH_START, _PATH_END = r"(?<![\w./-])", r"(?![\w.-])"


def map_mounts(text: str, mounts: Mapping[str, Path]) -> str:
    """``text`` with every mount path (as a whole path or a prefix of one) replaced by the
    host folder behind it, in one pass (a host folder is never mapped again), longest first.

    >>> map_mounts("--tls-ca-file /etc/tls/ca.pem /etc/tlsx", {"/etc/tls": Path("/x")})
    '--tls-ca-file /x/ca.pem /etc/tlsx'
    """
    if not mounts:
        return text
    hosts = {path.rstrip("/") or "/": str(host) for path, host in mounts.items()}
    choices = "|".join(re.escape(path) for path in sorted(hosts, key=len, reverse=True))
    pattern = f"{_PATH_START}({choices}){_PATH_END}"
    return re.sub(pattern, lambda match: hosts[match.group(1)], text)
