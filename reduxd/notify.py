"""systemd's sd_notify protocol with the standard library only.

One datagram of ``KEY=value`` lines to the AF_UNIX socket named by ``NOTIFY_SOCKET``
(a leading ``@`` means Linux's abstract namespace). Without ``NOTIFY_SOCKET``
(not run by systemd) every call is a no-op returning False.

Send READY=1 only once the ledger, observers and first scan are up, and
WATCHDOG=1 from the main loop after checking that observers, emitters and the
worker are alive: a separate ping thread would hide a hung main loop.
"""

import os
import socket


def _address(name):
    return "\0" + name[1:] if name.startswith("@") else name


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``'READY=1'``) to systemd; True if sent.

    Returns False when ``NOTIFY_SOCKET`` is unset or the send fails (a
    notification must never take the service down).

    Examples
    --------
    >>> notify("STATUS=idle")  # outside systemd
    False
    """
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(name))
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready() -> bool:
    """Tell systemd start-up is finished (``Type=notify``).

    Examples
    --------
    >>> ready()  # outside systemd
    False
    """
    return notify("READY=1")


def watchdog() -> bool:
    """Keep-alive ping for ``WatchdogSec=``; send at least every ``watchdog_interval() / 2``.

    Examples
    --------
    >>> watchdog()  # outside systemd
    False
    """
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """Tell systemd the service is shutting down.

    Examples
    --------
    >>> stopping()  # outside systemd
    False
    """
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """One-line status shown by ``systemctl status`` (newlines are replaced).

    Examples
    --------
    >>> status("night 2025-06-01: 120 done, 0 failed")  # outside systemd
    False
    """
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Seconds of ``WatchdogSec=`` for this process, or None when no watchdog is set.

    Honours ``WATCHDOG_PID``: the setting is for another process if it names one.

    Examples
    --------
    >>> watchdog_interval()  # under systemd with WatchdogSec=60  # doctest: +SKIP
    60.0
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None
