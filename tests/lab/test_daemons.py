import sys

from dataplane.lab import daemons


def test_start_find_and_stop_by_pid(tmp_path) -> None:
    d = daemons.Daemon("sleeper", (sys.executable, "-c", "import time; time.sleep(60)"), tmp_path)
    pid = daemons.start(d)
    try:
        assert daemons.pid_of(d.pidfile) == pid
    finally:
        assert daemons.stop(d.pidfile, timeout=5)
    assert daemons.pid_of(d.pidfile) is None
    assert not d.pidfile.exists()
    assert daemons.stop(d.pidfile) is False  # nothing running: nothing signalled


def test_a_reused_pid_is_not_ours(tmp_path) -> None:
    pidfile = tmp_path / "x.pid"
    pidfile.write_text("1 12345\n")  # pid 1 runs, but it did not start at that time
    assert daemons.pid_of(pidfile) is None
