"""The daemon's start: SIGHUP is handled before a listener is bound.

From the moment the ports accept, a reload may follow at once (`systemctl reload`, a script that waits for
the port), and SIGHUP's default action kills: the handler must be in place first. Signal installation and
the binding are recorded, not done."""

import signal
from pathlib import Path

from hapair import daemon, logs

DEFAULT = Path(daemon.__file__).with_name("default.yaml")


def test_sighup_is_handled_before_the_listeners_are_bound(monkeypatch):
    events = []
    monkeypatch.setattr(logs, "begin", lambda out: None)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: events.append(("signal", signum)))

    class Top:
        def privilegedStartService(self):
            events.append(("bind", None))
            raise OSError(98, "Address already in use")  # stops the start here: no reactor run

    class FakeDaemon:
        def __init__(self, path, config, reactor):
            self.top = Top()

    monkeypatch.setattr(daemon, "Daemon", FakeDaemon)
    assert daemon.run(str(DEFAULT)) == 1
    assert ("signal", signal.SIGHUP) in events
    assert events.index(("signal", signal.SIGHUP)) < events.index(("bind", None))
