"""Where the daemon's and its workers' events go: one text stream (stdout, the journal under systemd)."""

from __future__ import annotations

from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)


def begin(out: TextIO) -> None:
    """hapair's own events at info; the libraries' (AMP connection chatter, port opened) from warn up."""
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    levels.setLogLevelForNamespace("hapair", LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(out), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
