"""sd_notify over a real AF_UNIX datagram socket."""

import os
import socket

import pytest

from reduxd import notify


@pytest.fixture
def listener(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _recv(sock):
    return sock.recv(4096).decode()


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify("READY=1") is False
    assert notify.ready() is False
    assert notify.watchdog() is False


def test_messages(listener):
    assert notify.ready() is True
    assert _recv(listener) == "READY=1"
    assert notify.watchdog() is True
    assert _recv(listener) == "WATCHDOG=1"
    assert notify.status("2 roots\nwatching") is True
    assert _recv(listener) == "STATUS=2 roots watching"
    assert notify.stopping() is True
    assert _recv(listener) == "STOPPING=1"
    assert notify.notify("RELOADING=1\nMONOTONIC_USEC=1") is True
    assert _recv(listener) == "RELOADING=1\nMONOTONIC_USEC=1"


def test_abstract_namespace(monkeypatch):
    name = f"reduxd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready() is True
        assert _recv(sock) == "READY=1"
    finally:
        sock.close()


def test_dead_socket_returns_false(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify.watchdog() is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert notify.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert notify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "abc", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert notify.watchdog_interval() is None
