"""The access log: lines kept as formats and fields, written together once per DELAY, in order."""

import io
import re
import time

from twisted.internet.task import Clock

from proxy.accesslog import DELAY, LINES, AccessLog

PREFIX = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[hapair\.proxy#info\] "


def test_session_and_free_lines_are_written_together_after_the_delay_in_order():
    clock, out = Clock(), io.StringIO()
    log = AccessLog(clock, out)
    log.session("198.18.0.7", 40001, "198.18.1.1", 443, "CAS-HTTPS", "CAS1", 46, 1174, 0.0021, "server closed")
    log.line("198.18.0.8:40002 > 198.18.1.1:443 refused by CAS-HTTPS: maxconn 10 reached")
    log.session("198.18.0.9", 40003, "198.18.1.1", 25, "SMTP", "HT2", 0, 0, 3600.0, "client timeout")
    assert out.getvalue() == ""
    clock.advance(DELAY)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(PREFIX + r"198\.18\.0\.7:40001 > 198\.18\.1\.1:443 > CAS-HTTPS/CAS1 in=46 out=1174 "
                        r"0\.002s server closed", lines[0])  # fmt: skip
    assert re.fullmatch(PREFIX + "198.18.0.8:40002 > 198.18.1.1:443 refused by CAS-HTTPS: maxconn 10 reached",
                        lines[1])  # fmt: skip
    assert lines[2].endswith("198.18.0.9:40003 > 198.18.1.1:25 > SMTP/HT2 in=0 out=0 3600.000s client timeout")
    assert not clock.getDelayedCalls()


def test_percent_signs_in_text_and_labels_are_written_as_they_are():
    clock, out = Clock(), io.StringIO()
    log = AccessLog(clock, out)
    log.line("100% %s %d")
    log.session("198.18.0.7", 1, "198.18.1.1", 2, "VS %d", "RS%", 3, 4, 0.5, "a 50% reason")
    log.flush()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(" 100% %s %d")
    assert lines[1].endswith(" 198.18.0.7:1 > 198.18.1.1:2 > VS %d/RS% in=3 out=4 0.500s a 50% reason")


def test_flush_writes_what_waits_and_cancels_the_timer():
    clock, out = Clock(), io.StringIO()
    log = AccessLog(clock, out)
    log.line("one")
    log.flush()
    assert out.getvalue().endswith("one\n")
    assert not clock.getDelayedCalls()
    log.flush()  # nothing waiting: nothing written
    assert out.getvalue().count("\n") == 1
    log.line("two")  # a new batch gets a new timer
    assert len(clock.getDelayedCalls()) == 1


def test_the_prefix_follows_the_wall_clock_second(monkeypatch):
    now = [1_800_000_000.25]
    monkeypatch.setattr(time, "time", lambda: now[0])
    clock, out = Clock(), io.StringIO()
    log = AccessLog(clock, out)
    log.line("a")
    now[0] += 0.7  # same second
    log.session("198.18.0.7", 1, "198.18.1.1", 2, "VS", "RS", 3, 4, 0.5, "r")
    now[0] += 0.1  # the next one
    log.line("c")
    log.flush()
    stamps = [line.split(" ")[0] for line in out.getvalue().splitlines()]
    want = [time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(s)) for s in (1_800_000_000, 1_800_000_000, 1_800_000_001)]
    assert stamps == want


def test_a_log_that_cannot_be_written_does_not_raise():
    class Broken(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    clock = Clock()
    log = AccessLog(clock, Broken())
    log.line("lost to a full disk, not to an exception")
    clock.advance(DELAY)
    log.line("the next batch is tried again")
    log.flush()


def test_a_full_batch_is_written_at_once():
    clock, out = Clock(), io.StringIO()
    log = AccessLog(clock, out)
    for i in range(LINES - 1):
        log.session("198.18.0.7", i, "198.18.1.1", 443, "VS", "RS", 1, 2, 0.1, "server closed")
    assert out.getvalue() == ""
    log.line("the last one of the batch")
    assert out.getvalue().count("\n") == LINES and not clock.getDelayedCalls()
    log.line("the first of the next")
    clock.advance(DELAY)
    assert out.getvalue().count("\n") == LINES + 1
