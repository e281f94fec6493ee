"""Running the page: a uvicorn server in a thread, and the ``reduxd serve`` command.

``reduxd watch`` starts :class:`WebServer` beside its main loop when ``[web]
listen`` is set; ``reduxd serve`` runs the same server alone, for an output
folder and ledger written by another process (a running daemon or a finished
``reduxd reduce``). Both read the ledger read-only.
"""

import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from datetime import UTC, datetime

from reduxd.errors import ConfigError
from reduxd.lock import holder
from reduxd.log import get_logger

log = get_logger("reduxd.web")
TOKEN_ENV = "REDUXD_WEB_TOKEN"
NICE = 10  # scheduling niceness added to the web process under `reduxd watch`


def parse_listen(text):
    """``"host:port"`` -> ``(host, port)``; IPv6 as ``"[::1]:8750"``.

    Examples
    --------
    >>> parse_listen("127.0.0.1:8750"), parse_listen("[::1]:80")
    (('127.0.0.1', 8750), ('::1', 80))
    """
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"[web] listen: expected 'host:port' (e.g. 127.0.0.1:8750), got {text!r}")
    return host, int(port)


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_token(config):
    """The token: ``$REDUXD_WEB_TOKEN`` if set, else ``[web] token``."""
    return os.environ.get(TOKEN_ENV) or config.web.token


def check_listen(config, listen=None):
    """``(host, port, token)`` for ``listen`` (default ``[web] listen``), or ConfigError.

    A non-loopback address without a token is refused.
    """
    host, port = parse_listen(config.web.listen if listen is None else listen)
    token = web_token(config)
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"{config.source}: [web] listen = {host}:{port} is not a loopback address: set "
            f"[web] token or ${TOKEN_ENV} (or listen on 127.0.0.1 and use an SSH tunnel)"
        )
    return host, port, token


class WebServer:
    """The page's server in a background thread (uvicorn) plus its :class:`Live` reader.

    Parameters
    ----------
    config : reduxd.config.Config
    listen : str, optional
        ``host:port`` overriding ``[web] listen`` (port 0: any free port).
    service : callable, optional
        Facts about the running daemon, for the page's service panel.
    """

    def __init__(self, config, *, listen=None, service=None, interval=0.5):
        import uvicorn

        from reduxd.web.app import make_app
        from reduxd.web.live import Live

        host, port, token = check_listen(config, listen)
        self.live = Live(config, service=service, interval=interval)
        self.app = make_app(self.live, token=token)
        self.host, self.token = host, token
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ConfigError(f"[web] listen = {host}:{port}: cannot listen there: {exc}") from exc
        self.port = self.sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=2, server_header=False,
        )  # fmt: skip
        self.server = uvicorn.Server(uv_config)
        self.thread = None

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self):
        """Start serving; returns once the server accepts connections."""
        self.live.start()
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="reduxd-web",
            daemon=True,
        )  # fmt: skip
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise ConfigError(f"web server on {self.url} did not start")
        log.info("web_started", url=self.url, token=bool(self.token))
        return self

    def stop(self):
        """Close the event streams and stop the server and the reader."""
        self.app.state.stopping = True
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.live.stop()
        self.sock.close()


def start_for_service(service):
    """Start the page beside ``reduxd watch`` (a :class:`reduxd.daemon.Service`); None if off.

    The server runs in a child process (its own interpreter and GIL), so serving
    the page and rebuilding light curves never slow the daemon's worker down.
    """
    if not service.config.web.listen:
        return None
    started = datetime.now(UTC).isoformat(timespec="seconds")

    def facts():
        watcher = service.watcher
        pipeline = service.pipeline
        return {
            "running_since": started,
            "pid": os.getpid(),
            "roots": [str(r) for r in watcher.roots] if watcher else [],
            "observer": watcher.kinds() if watcher else None,
            "pending_sets": [repr(k) for k in list(pipeline.sets)] if pipeline else [],
        }

    try:
        return WebProcess(service.config, facts).start()
    except ConfigError as exc:  # the reduction matters more than the page
        log.warning("web_not_started", reason=str(exc))
        return None


class WebProcess:
    """:class:`WebServer` in a child process, fed the daemon's facts once a second.

    The child exits when told to, on SIGTERM, or when the pipe to the daemon
    breaks (the daemon died); it ignores SIGINT (Ctrl-C reaches the whole process
    group, and the daemon stops it once the current frame is done).
    """

    def __init__(self, config, facts):
        import multiprocessing

        check_listen(config)  # a refused address fails here, in the daemon's log
        self.config = config
        self.facts = facts
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_child, args=(config, child_conn), name="reduxd-web", daemon=True
        )
        self._stop = threading.Event()
        self._feeder = None
        self.url = None

    def start(self):
        self.process.start()
        if not self.conn.poll(60):
            self.process.terminate()
            raise ConfigError("web server process did not start within 60 s")
        kind, value = self.conn.recv()
        if kind == "error":
            self.process.join(10)
            raise ConfigError(value)
        self.url = value
        with contextlib.suppress(Exception):  # the daemon's first facts, at once
            self.conn.send(("facts", self.facts()))
        self._feeder = threading.Thread(target=self._feed, name="reduxd-web-facts", daemon=True)
        self._feeder.start()
        return self

    def _feed(self):
        last = None
        while not self._stop.wait(1.0):
            try:
                facts = self.facts()
            except Exception:  # the daemon's objects changed under us: next time
                continue
            if facts != last:
                try:
                    self.conn.send(("facts", facts))
                except OSError:
                    return
                last = facts

    def stop(self):
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(5)
        with contextlib.suppress(OSError):
            self.conn.send(("stop", None))
        self.process.join(15)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


def _child(config, conn):
    """The web process: serve until told to stop, SIGTERM, or the daemon is gone."""
    from reduxd.log import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE)  # the worker comes first when both want a core
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(level=config.logging.level, json_file=config.logging.json_file or None)
    facts = {}
    try:
        server = WebServer(config, service=lambda: facts.get("now")).start()
    except Exception as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("url", server.url))
    try:
        while not stop.is_set():
            if not conn.poll(0.5):
                continue
            kind, value = conn.recv()
            if kind == "stop":
                break
            facts["now"] = value
    except (EOFError, OSError):  # the daemon is gone
        pass
    finally:
        server.stop()


# -- reduxd serve ---------------------------------------------------------------


def register(subparsers):
    p = subparsers.add_parser(
        "serve",
        help="serve the live web page for an output folder (read-only)",
        description="Serve the web page of `reduxd watch` for an existing output folder and "
        "ledger (a running daemon in another process, or a finished `reduxd reduce`), "
        "read-only.",
    )
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--state", help="ledger file (default from the config)")
    p.add_argument("--outdir", help="output folder (default from the config)")
    p.add_argument("--listen", help="host:port (default [web] listen, e.g. 127.0.0.1:8750)")
    p.set_defaults(func=run)


def daemon_facts(config):
    """The ``reduxd watch`` holding this ledger, as the page's service facts; None if none.

    From its lock (:func:`reduxd.lock.holder`: pid, start); the roots and observer are
    the config's, and its pending calibration sets are not known from outside.
    """
    info = holder(config.paths.state_file)
    if not info or info.get("command") != "watch":
        return None
    return {
        "running_since": info.get("started"),
        "pid": info.get("pid"),
        "roots": [str(r) for r in (*config.paths.data, *config.paths.calibration)],
        "observer": config.watch.observer,
        "pending_sets": [],
    }


def run(args):
    from reduxd.config import load_config
    from reduxd.log import configure_logging

    paths = {k: v for k, v in (("state", args.state), ("outdir", args.outdir)) if v}
    config = load_config(args.config, {"paths": paths} if paths else None)
    configure_logging(level=config.logging.level)
    listen = args.listen if args.listen is not None else config.web.listen
    if not listen:
        raise ConfigError("nothing to serve on: [web] listen is empty and no --listen given")
    server = WebServer(config, listen=listen, service=lambda: daemon_facts(config))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"reduxd: serving {config.paths.outdir} on {server.url}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5) and server.thread.is_alive():
            pass
    finally:
        server.stop()
    return 0
