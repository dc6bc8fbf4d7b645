"""The control channel's commands over an in-memory connection."""

from twisted.internet import defer
from twisted.protocols import amp
from twisted.test import iosim

from hapair import control


class FakeDaemon:
    def __init__(self):
        self.calls = []

    def status(self):
        # Far over AMP's 64 KiB value limit: must travel in chunks.
        return {"virtual_services": [{"label": f"VS{i}", "servers": ["x" * 100] * 10} for i in range(200)]}

    def set_admin_state(self, server, state, vs, clear_persistence):
        self.calls.append((server, state, vs, clear_persistence))
        if server == "NOPE":
            raise control.UnknownServerError("no real server 'NOPE' in any virtual service")
        return [["CAS-RPC", server]]

    def reload(self):
        return defer.fail(control.ConfigInvalidError("f.yaml:3: ports: bad"))


def connected():
    daemon = FakeDaemon()
    server, client = control.ControlProtocol(daemon), amp.AMP()
    c, s, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
    return daemon, client, pump


def result_of(d, pump):
    out = []
    d.addBoth(out.append)
    pump.flush()
    assert len(out) == 1
    return out[0]


def test_status_larger_than_one_amp_value_arrives_whole():
    daemon, client, pump = connected()
    status = result_of(client.callRemote(control.Status), pump)["status"]
    assert status == daemon.status()


def test_set_admin_state_passes_every_argument():
    daemon, client, pump = connected()
    answer = result_of(client.callRemote(control.SetAdminState, server="CAS2", state="drain", vs="CAS-RPC",
                                         clear_persistence=True), pump)  # fmt: skip
    assert answer["changed"] == [["CAS-RPC", "CAS2"]]
    assert daemon.calls == [("CAS2", "drain", "CAS-RPC", True)]


def test_declared_errors_reach_the_client_with_their_message():
    _, client, pump = connected()
    failure = result_of(client.callRemote(control.SetAdminState, server="NOPE", state="halt", vs=None,
                                          clear_persistence=False), pump)  # fmt: skip
    assert failure.check(control.UnknownServerError) and "NOPE" in failure.getErrorMessage()
    failure = result_of(client.callRemote(control.Reload), pump)
    assert failure.check(control.ConfigInvalidError) and "ports: bad" in failure.getErrorMessage()
