"""Writing a replicated configuration on the slave: whole or not at all.

The node's file keeps everything outside its `cluster:` section byte for byte (its node section, its
comments); only that section is replaced. The new text is parsed as a whole before anything is written,
and written by temp file, fsync and rename, so a crash leaves the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from hapair import configfile
from hapair.config import Config
from replication.document import Versioned


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replaces `path` (the file a symlink points to, not the link) whole; a new file gets `mode`."""
    import tempfile

    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def with_cluster(text: str, doc: dict[str, Any]) -> str:
    """`text` (a node's file) with its cluster section replaced by `doc`; everything else untouched."""
    section = yaml.safe_dump({"cluster": doc}, sort_keys=False, default_flow_style=False)
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    for key, value in root.value:
        if key.value == "cluster":
            start, end = key.start_mark.index, value.end_mark.index
            rest = text[end:]
            return text[:start] + section + (rest if rest.startswith("\n") or not rest else "\n" + rest).lstrip("\n")
    return text.rstrip("\n") + "\n" + section


def prepare(path: str, doc: dict[str, Any]) -> tuple[str, Config]:
    """The new file text and what it parses to; raises ConfigError (nothing written) if it is unusable."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new_text = with_cluster(text, doc)
    return new_text, configfile.parse(new_text, f"{path} (replicated)")


def commit(path: str, new_text: str, state_path: str, version: Versioned, origin: str) -> None:
    write_atomic(path, new_text.encode())
    save_version(state_path, version, origin)


def save_version(state_path: str, version: Versioned, origin: str) -> None:
    os.makedirs(os.path.dirname(state_path), exist_ok=True)
    record = {"version": version.version, "digest": version.digest, "from": origin}
    write_atomic(state_path, json.dumps(record).encode())


def load_version(state_path: str) -> tuple[Versioned, str] | None:
    try:
        with open(state_path, encoding="utf-8") as f:
            record = json.load(f)
        return Versioned(int(record["version"]), str(record["digest"])), str(record.get("from", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None
