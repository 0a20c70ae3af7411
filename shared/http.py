"""HTTP endpoints served by ``axiom-flow serve`` (and, per endpoint, by Cloud
Functions): ``/healthz``, STOW-RS (``shared/inputs/stow/``) and the API under
``/api/v1`` (:mod:`shared.api`: status, exception records and the config, each route
behind a key or Google ID token and a role). Also the server that serves them
(:class:`HttpServer`).

``/healthz`` is the liveness probe of load balancers, which have no key: it needs no
credentials and answers ``ok`` and nothing else (``/api/v1/health`` says which store
is down, so it needs ``status:read``).

Host check (DNS rebinding). A web page that a browser on this machine opens could
point a name of its own at 127.0.0.1 (DNS rebinding), and the browser then sends that
name in the Host header. So the API (its document and docs page included) answers only
requests whose Host is one of this server's own names (:class:`HostCheck`) and
refuses any other with 421 Misdirected Request (RFC 9110 15.5.20). ``/healthz``
tells nothing and STOW-RS has its API keys: neither is host-checked, so
load-balancer probes and remote senders that reach the server under a name of their
own (a DNS alias, a proxy, a NAT address) keep working, and a rebinding page cannot
send to STOW-RS without a key it does not have.

The server. waitress (pure Python) reads every request on one event loop and hands
only complete requests to a fixed pool of threads, so connections that send their
headers slowly hold no thread; at most ``CONNECTION_LIMIT`` connections are open
(more wait in the listen backlog), a request whose headers have not all arrived
within ``HEADER_TIMEOUT_S`` is closed, and so is a connection idle for
``IDLE_TIMEOUT_S`` (also mid-body). What can be decided from the request line and
headers alone (wrong Host, no or a wrong STOW-RS API key, a body over the limit, a
media type STOW-RS does not take) is answered before any byte of the body is read
(:func:`early_answer`); waitress would otherwise receive the whole body first. A
body that is read is spooled by waitress, in memory up to 512 KB and then in an
unnamed temporary file (``tmp/`` of the data dir), before the app reads it in chunks:
memory does not grow with the request, and disk use is about twice the body while
STOW-RS splits it into parts.

HTTPS. Given an :func:`tls_context` (``serve --tls-cert/--tls-key``), the same server
speaks TLS in its channel (:class:`_TlsChannel`: an :class:`ssl.SSLObject` over memory
BIOs), so everything above holds over TLS too; the header timeout also covers a
handshake that never finishes. Without TLS and bound beyond loopback, :meth:`HttpServer.start`
logs a warning. In GCP the API runs behind Google's HTTPS.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import Error

from shared.logs import describe_os_error

log = logging.getLogger(__name__)

# the server (HttpServer)
THREADS = 6  # requests served at once; more complete requests wait in waitress's queue
CONNECTION_LIMIT = 100  # open connections; more wait in the listen backlog
HEADER_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
IDLE_TIMEOUT_S = 30.0  # nothing received or sent (also mid-body), or an idle keep-alive
CONTROL_BODY_MAX = 64 * 1024  # bodies to anything but STOW-RS and the routes below
# API routes that take more: one DICOM instance to dry-run the rules on, a whole config
# (still capped by the server's largest body, stow.max_request_bytes)
LARGER_BODIES = {"/api/v1/rules/test": 1 << 30, "/api/v1/config/import": 16 << 20}
DRAIN_MAX_BYTES = 8 * 1024 * 1024  # read and drop at most this much of a refused body ...
DRAIN_MAX_S = 5.0  # ... for at most this long, so the client reads our answer, not a reset
TLS_CLOSE_S = 5.0  # after our close_notify is queued, at most this long for the socket to take the rest

# endpoints answered whatever the Host header says (see the module docstring)
HOST_CHECK_EXEMPT = frozenset({"healthz", "stow.store", "stow.store_in_study"})
EARLY_ANSWER = "axiom_flow.early_answer"  # app.extensions key: see early_answer()

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _split_host(value: str) -> tuple[str, int | None]:
    """("name", port or None) from a Host header or an allowed-hosts entry
    (``name``, ``name:port``, ``1.2.3.4:port``, ``[::1]:port``); ValueError if it is
    none of these."""
    value = value.strip()
    if not value or any(c in value for c in "/?#@ \t\\"):
        raise ValueError(f"{value!r} is not a host name with an optional port")
    parts = urlsplit("//" + value)
    name = (parts.hostname or "").rstrip(".")
    if not name:
        raise ValueError(f"{value!r} is not a host name with an optional port")
    return name.lower(), parts.port  # .port raises ValueError for a bad port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name a server binds) is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HostCheck:
    """The Host headers the control routes answer: the bound address with the port,
    ``localhost`` (any port), and ``allowed`` entries (``name`` for any port,
    ``name:port`` for that one). Bound to every interface (``0.0.0.0``, ``::``), any IP
    address with the port is also accepted: a browser sends an address as Host only
    when the page itself came from that address and port, i.e. from this server, so an
    address cannot be used for DNS rebinding."""

    def __init__(self, bound_host: str, port: int | None, allowed: Iterable[str] = ()):
        self.bound_host = bound_host
        self.port = port
        self.any_port = {"localhost"}
        self.with_port: set[tuple[str, int]] = set()
        for entry in allowed:
            name, entry_port = _split_host(entry)
            if entry_port is None:
                self.any_port.add(name)
            else:
                self.with_port.add((name, entry_port))

    @staticmethod
    def parse(value: str) -> list[str]:
        """Comma-separated entries (a CLI value); ValueError naming a bad one."""
        entries = [e.strip() for e in value.split(",") if e.strip()]
        for entry in entries:
            _split_host(entry)
        return entries

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False  # HTTP/1.0 without Host: cannot tell which name was used
        try:
            name, port = _split_host(host_header)
        except ValueError:
            return False
        port = 80 if port is None else port
        if name in self.any_port or (name, port) in self.with_port:
            return True
        bound = self.bound_host.strip("[]").lower()
        if port != self.port:
            return False
        return name == bound or (bound in _WILDCARDS and _is_ip(name))


def _json_error(status: int, message: str) -> Response:
    response = jsonify({"status": status, "error": message})
    response.status_code = status
    return response


def create_app(ports, status: Callable[[], dict] | None = None, *, stow: bool = True, api=True,
               host_check: HostCheck | None = None) -> Flask:
    """The embedded runtime's HTTP app over its :class:`shared.ports.Ports`. ``api``:
    serve the API under ``/api/v1`` (True: :func:`shared.api.app.create_api` over
    ``ports``, with ``status`` as the runtime's own status; or the FastAPI app to
    serve). Only requests for this server's own names reach the API (``host_check``;
    by default ``localhost``, see :class:`HostCheck`)."""
    app = Flask("axiom-flow")
    host_check = host_check or HostCheck("localhost", None)

    def refuse_unknown_host() -> Response | None:
        if request.endpoint in HOST_CHECK_EXEMPT or host_check.allows(request.headers.get("Host")):
            return None
        log.warning("HTTP %s %s refused: Host %r is not one of this server's names", request.method, request.path,
                    request.headers.get("Host", "")[:100])
        return _json_error(421, "this server does not answer for the host name in the request (Host header); "
                                "if it is one of the server's names, add it to serve's --http-allowed-hosts "
                                "(AXIOM_HTTP_ALLOWED_HOSTS)")

    app.before_request(refuse_unknown_host)

    @app.get("/healthz")
    def healthz():
        """Liveness for load balancers: no credentials, says nothing but ``ok``."""
        return "ok\n", 200, {"Content-Type": "text/plain"}

    stow_bp = None
    if stow:
        from shared.inputs.stow.http import stow_blueprint

        stow_bp = stow_blueprint(ports)
        app.register_blueprint(stow_bp)

    def early(environ: dict) -> Response | None:
        with app.request_context(environ):
            refused = refuse_unknown_host()
            if refused is not None:
                return refused
            if stow_bp is not None and request.blueprint == stow_bp.name:
                return stow_bp.early_answer(request)
            limit = LARGER_BODIES.get(request.path, CONTROL_BODY_MAX)
            if (request.content_length or 0) > limit or "chunked" in request.headers.get(
                    "Transfer-Encoding", "").lower():
                return _json_error(413, f"this endpoint takes no request body over {limit} bytes")
            return None

    app.extensions[EARLY_ANSWER] = early
    if api:
        _mount_api(app, ports, None if api is True else api, status)
    return app


def _mount_api(app: Flask, ports, api=None, status: Callable[[], dict] | None = None) -> None:
    """Serve the API (:mod:`shared.api`, ASGI) under ``/api/v1`` from this WSGI app:
    requests for it go to FastAPI through a2wsgi, with their full path."""
    from a2wsgi import ASGIMiddleware

    from shared.api.app import PREFIX, create_api

    asgi = ASGIMiddleware(api if api is not None else create_api(ports, runtime_status=status))
    flask_wsgi = app.wsgi_app

    def dispatch(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == PREFIX or path.startswith(PREFIX + "/"):
            return asgi(environ, start_response)
        return flask_wsgi(environ, start_response)

    app.wsgi_app = dispatch


def early_answer(app: Flask, environ: dict) -> Response | None:
    """The app's answer from the request line and headers alone (``environ`` with an
    empty ``wsgi.input``), or None to read the body and call the app."""
    hook = app.extensions.get(EARLY_ANSWER)
    return hook(environ) if hook else None


# --- the server -----------------------------------------------------------------------


class _Answer(Error):
    """A Flask response given in place of waitress's error page."""

    def __init__(self, response: Response):
        super().__init__("")
        self.code = response.status_code
        self.response = response

    def to_response(self, ident=None):
        skip = {"content-length", "connection"}  # the task writes its own
        headers = [(k, v) for k, v in self.response.headers.items() if k.lower() not in skip]
        status = self.response.status_code
        try:  # "401 Unauthorized" (werkzeug writes "401 UNAUTHORIZED")
            return f"{status} {HTTPStatus(status).phrase}", headers, self.response.get_data()
        except ValueError:
            return self.response.status, headers, self.response.get_data()


class _ErrorTask(ErrorTask):
    """Error answers as JSON ``{"status", "error"}``, like the app's own."""

    def execute(self):
        error = self.request.error
        if isinstance(error, _Answer):
            status, headers, body = error.to_response()
        else:  # waitress's own: bad request line or headers, headers or body too large
            status = f"{error.code} {error.reason}"
            headers = [("Content-Type", "application/json")]
            message = f"{error.reason}: {error.body}"
            if error.code == 413:  # a chunked body past max_request_body_size: STOW-RS's limit
                message = (f"request body is larger than the limit of {self.channel.adj.max_request_body_size - 1}"
                           " bytes (stow.max_request_bytes)")
            body = json.dumps({"status": error.code, "error": message}).encode()
        self.channel.linger_on_close = True  # the client may still be sending: let it read this
        self.status = status
        self.response_headers.extend(headers)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Parser(HTTPRequestParser):
    """waitress's parser, asking the app for an early answer once the headers are in."""

    def __init__(self, adj, *, channel: "_Channel"):
        super().__init__(adj)
        self.channel = channel

    def parse_header(self, header_plus):
        super().parse_header(header_plus)
        try:
            answer = early_answer(self.channel.server.flask_app, self._environ())
        except Exception:  # a bug here must not stop the event loop: let the app answer
            log.exception("HTTP: early answer failed for %s %s", self.command, self.path)
            return
        if answer is None:
            return
        self.error = _Answer(answer)
        self.expect_continue = False  # no "100 Continue": the client need not send the body
        self.content_length = 0  # nor does waitress wait for it, or judge its size
        self.body_rcv = None
        self.connection_close = True

    def received(self, data):
        consumed = super().received(data)
        # answered from the headers: what came with them is the refused body, not a next request
        return len(data) if isinstance(self.error, _Answer) else consumed

    def _environ(self) -> dict:
        environ = {
            "REQUEST_METHOD": self.command, "PATH_INFO": self.path, "QUERY_STRING": self.query,
            "SERVER_NAME": self.channel.server.server_name, "SERVER_PORT": str(self.channel.server.effective_port),
            "SERVER_PROTOCOL": f"HTTP/{self.version}", "SCRIPT_NAME": "", "REMOTE_ADDR": self.channel.addr[0],
            "wsgi.url_scheme": self.url_scheme, "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for key, value in self.headers.items():
            environ[key if key in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + key] = value
        if self.chunked:
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"  # waitress took it out of the headers
        return environ


class _Channel(HTTPChannel):
    """waitress's connection, with a deadline for the headers and, after an early
    answer to a request with a body, a lingering close: the answer is sent, our side
    shut for writing, and what the client still sends is read and dropped (up to
    DRAIN_MAX_BYTES / DRAIN_MAX_S) so it reads the answer rather than a reset."""

    error_task_class = _ErrorTask
    linger_on_close = False
    linger_until: float | None = None
    linger_left = 0
    request_started = 0.0

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        self.parser_class = functools.partial(_Parser, channel=self)
        self.request_started = time.monotonic()

    def received(self, data):
        if self.requests and isinstance(self.requests[-1].error, _Answer):
            return True  # answered from the headers: this is the refused body, dropped
        if self.request is None and not self.requests:
            self.request_started = time.monotonic()
        return super().received(data)

    def headers_overdue(self, now: float) -> bool:
        """Connected, no request being served, and the current one's headers (or the
        first byte of a first request) have been arriving for too long."""
        if self.requests or (self.request is not None and self.request.headers_finished):
            return False
        waiting = self.request is not None or self.last_activity == self.creation_time
        return waiting and now - self.request_started > HEADER_TIMEOUT_S

    def handle_close(self):
        if self.linger_on_close and self.linger_until is None and self.connected and not self.total_outbufs_len:
            self.linger_on_close = False
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                return super().handle_close()
            self.linger_until = time.monotonic() + DRAIN_MAX_S
            self.linger_left = DRAIN_MAX_BYTES
            self.will_close = False
            return None
        return super().handle_close()

    def readable(self):
        return True if self.linger_until is not None else super().readable()

    def writable(self):
        return self.will_close if self.linger_until is not None else super().writable()

    def handle_read(self):
        if self.linger_until is None:
            return super().handle_read()
        data = self.recv(self.adj.recv_bytes)  # closes the channel itself at EOF or a reset
        self.linger_left -= len(data)
        if self.connected and (self.linger_left <= 0 or time.monotonic() > self.linger_until):
            self.handle_close()
        return None


class _TlsChannel(_Channel):
    """A :class:`_Channel` speaking TLS (RFC 8446, RFC 5246) through an
    :class:`ssl.SSLObject` over memory BIOs, as asyncio's ``sslproto`` does: what the
    socket gives is fed to the TLS object (the handshake first) and waitress receives
    the plaintext; what waitress sends is encrypted and queued as ciphertext, and the
    channel stays writable while ciphertext is queued (the handshake's answers too,
    when HTTP has nothing to write). Encrypting waits until the socket took the last
    ciphertext, so at most one chunk of it is held; the rest stays in waitress's
    buffers. A failed handshake is closed with one log line; a close sends
    close_notify (RFC 8446 6.1) first. The SSL object is not thread-safe and task
    threads send while the event loop reads: every use holds ``_tls_lock``."""

    _closing_until: float | None = None  # close_notify queued: close once sent, or at this time
    _unfinished_logged = False

    def __init__(self, server, sock, addr, adj, map=None):
        # before the base class registers the channel with the event loop (writable() reads these)
        self._tls_lock = threading.Lock()
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = server.tls_context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshaken = False
        self._ciphertext = bytearray()  # encrypted, not yet taken by the socket
        self._plaintext = bytearray()  # decrypted, for waitress's next recv()
        self.addr = addr
        super().__init__(server, sock, addr, adj, map)

    def _peer(self) -> str:
        host, port = self.addr[:2] if isinstance(self.addr, tuple) else (self.addr, 0)
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def _log_unfinished(self, level: int, what: str) -> None:
        """One line for a connection that never finished its handshake."""
        if not self._handshaken and not self._unfinished_logged:
            self._unfinished_logged = True
            log.log(level, "HTTPS: connection from %s closed: %s", self._peer(), what)

    # --- reading (the event loop's thread) ---

    def handle_read(self):
        if self.linger_until is not None:
            return super().handle_read()  # draining a refused body: dropped undecrypted (recv below)
        if self._decrypt_some():
            return super().handle_read()  # waitress's: recv() gives it the plaintext
        return None

    def recv(self, buffer_size):
        if self.linger_until is not None:
            return super().recv(buffer_size)
        data = bytes(self._plaintext)
        self._plaintext.clear()
        return data

    def _decrypt_some(self) -> bool:
        """Read the socket once and run what came through TLS; True when there is
        plaintext for waitress. Closes the channel when the connection ended or TLS failed."""
        try:
            data = self.socket.recv(self.adj.recv_bytes)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._log_unfinished(logging.INFO, f"connection error during the TLS handshake ({describe_os_error(exc)})")
            self._abort()
            return False
        if not data:
            self._log_unfinished(logging.INFO, "the client closed it during the TLS handshake")
            self._abort()
            return False
        failed: ssl.SSLError | None = None
        peer_closed = False
        with self._tls_lock:
            self._incoming.write(data)
            try:
                if not self._handshaken:
                    self._tls.do_handshake()
                    self._handshaken = True
                while chunk := self._tls.read(self.adj.recv_bytes):
                    self._plaintext += chunk
            except ssl.SSLWantReadError:
                pass  # a record (or the handshake) is not complete yet
            except ssl.SSLZeroReturnError:
                peer_closed = True  # the client's close_notify
            except ssl.SSLError as exc:
                failed = exc
            self._ciphertext += self._outgoing.read()  # the handshake's answers, an alert, session tickets
            sent = self._send_ciphertext()
        if failed is not None:
            reason = failed.reason or type(failed).__name__
            hint = "; plain HTTP sent to the HTTPS port" if reason == "HTTP_REQUEST" else ""
            if self._handshaken:
                log.warning("HTTPS: connection from %s closed: TLS error (%s)", self._peer(), reason)
            self._log_unfinished(logging.WARNING, f"TLS handshake failed ({reason}{hint})")
            self._abort()
            return False
        if not sent:
            self._log_unfinished(logging.INFO, "connection error during the TLS handshake")
            self._abort()
            return False
        if peer_closed:
            self.will_close = True  # nothing more comes from the client: close (with our close_notify)
        return bool(self._plaintext)

    def headers_overdue(self, now: float) -> bool:
        overdue = super().headers_overdue(now)  # counts from the connection: covers the handshake too
        if overdue:
            self._log_unfinished(logging.INFO, f"TLS handshake not finished within {HEADER_TIMEOUT_S:g} s")
        return overdue

    # --- writing (the event loop's thread, and task threads through waitress's flush) ---

    def _send_ciphertext(self) -> bool:
        """Give queued ciphertext to the socket, as much as it takes now; False when the
        connection failed. Call holding ``_tls_lock``."""
        sock = self.socket
        if sock is None:
            return False
        while self._ciphertext:
            try:
                n = sock.send(self._ciphertext)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            del self._ciphertext[:n]
        return True

    def send(self, data, do_close=True):
        """waitress's plaintext: encrypted and sent; the number of its bytes taken (0
        while earlier ciphertext is still queued)."""
        with self._tls_lock:
            ok = self._send_ciphertext()
            taken = 0
            if ok and not self._ciphertext and self._handshaken and self._closing_until is None:
                try:
                    taken = self._tls.write(data)
                except ssl.SSLError:
                    ok = False
                self._ciphertext += self._outgoing.read()
                ok = ok and self._send_ciphertext()
            queued = bool(self._ciphertext)
        if not ok:
            if do_close:  # waitress's own rule: only the event loop's thread closes
                self._abort()
            return 0
        if queued and not do_close:
            self.server.pull_trigger()  # a task thread: wake the event loop to wait for the socket
        return taken

    def writable(self):
        return bool(self._ciphertext) or super().writable()

    def handle_write(self):
        with self._tls_lock:
            ok = self._send_ciphertext()
            queued = bool(self._ciphertext)
        if not ok:
            return self._abort()
        if self._closing_until is not None:
            return None if queued else super().handle_close()  # close_notify sent: close
        if not queued:
            return super().handle_write()
        return None  # the socket is full: waitress's output waits in its buffers

    # --- closing ---

    def handle_close(self):
        if self._closing_until is None and self._handshaken and self.socket is not None:
            with self._tls_lock:
                try:
                    self._tls.unwrap()  # queues our close_notify
                except ssl.SSLError:
                    pass  # SSLWantReadError: the client's close_notify is not waited for (RFC 8446 6.1)
                self._ciphertext += self._outgoing.read()
                ok = self._send_ciphertext()
                queued = bool(self._ciphertext)
            self._closing_until = time.monotonic() + TLS_CLOSE_S
            if ok and queued:
                return None  # handle_write closes once the socket took it, maintenance at the deadline
            if not ok:
                self.linger_on_close = False
        elif not self._handshaken:
            self._log_unfinished(logging.INFO, "closed before its TLS handshake finished")
        return super().handle_close()  # _Channel's: may still linger (the refused body is read and dropped)

    def _abort(self) -> None:
        """Close now: no close_notify, no lingering (the connection failed)."""
        self._closing_until = self._closing_until or time.monotonic()
        self.linger_on_close = False
        super().handle_close()

    def close_overdue(self, now: float) -> bool:
        """close_notify queued longer than TLS_CLOSE_S: the client does not read."""
        return self._closing_until is not None and self.socket is not None and now > self._closing_until \
            and bool(self._ciphertext)


class _Server(TcpWSGIServer):
    channel_class = _Channel
    flask_app: Flask  # waitress's application is the app wrapped in its proxy-header middleware
    tls_context: ssl.SSLContext | None = None  # set: channels are _TlsChannel

    def maintenance(self, now):
        super().maintenance(now)  # idle connections (channel_timeout)
        mono = time.monotonic()
        for channel in list(self.active_channels.values()):
            lingered = channel.linger_until is not None and mono > channel.linger_until
            if lingered or channel.headers_overdue(mono):
                channel.will_close = True
            if isinstance(channel, _TlsChannel) and channel.close_overdue(mono):
                # closed here, in the event loop's thread: a socket that takes nothing never becomes
                # writable, so handle_write would never come
                channel._abort()


def tls_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """The server side of HTTPS: ``cert`` (PEM: the server's certificate, then any
    intermediates) and its unencrypted ``key`` (PEM); TLS 1.2 or later (BCP 195).
    ValueError with one line saying what is wrong with the files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # client-started renegotiation costs us CPU and gains nothing
    ctx.set_alpn_protocols(["http/1.1"])

    def no_passphrase():  # else OpenSSL asks on the terminal, and a service has none
        raise ValueError(f"{key}: the key is encrypted; give an unencrypted key (readable by this user only)")

    # OpenSSL says only "PEM lib" for a file that is not what it should be: look first
    for path, marker, what in ((cert, b"-----BEGIN CERTIFICATE-----", "a PEM certificate"),
                               (key, b"PRIVATE KEY-----", "a PEM private key")):
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{path}: {describe_os_error(exc)}") from None
        if marker not in text:
            raise ValueError(f"{path}: not {what}")
    try:
        ctx.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"{key}: this key does not belong to the certificate in {cert}") from None
        raise ValueError(f"{cert}, {key}: not usable as a certificate and its key ({exc.reason or exc})") from None
    except OSError as exc:
        raise ValueError(f"{exc.filename or cert}: {describe_os_error(exc)}") from None
    return ctx


def missing_tls_internals() -> list[str]:
    """What :class:`_TlsChannel` relies on of waitress's internals and this waitress
    lacks (pinned: waitress 3.0.x; see docs/upstream/README.md). HTTPS refuses to start
    without them: serving plain HTTP in its place would send keys in clear."""
    missing = []
    for name in ("handle_read", "handle_write", "handle_close", "readable", "writable", "_flush_some", "received"):
        if not callable(getattr(HTTPChannel, name, None)):
            missing.append(f"HTTPChannel.{name}")
    reads = getattr(getattr(HTTPChannel, "handle_read", None), "__code__", None)
    if reads is None or "recv" not in reads.co_names:
        missing.append("HTTPChannel.handle_read calling self.recv")
    flush = getattr(getattr(HTTPChannel, "_flush_some", None), "__code__", None)
    if flush is None or "send" not in flush.co_names:
        missing.append("HTTPChannel._flush_some calling self.send")
    for name in ("total_outbufs_len", "will_close", "close_when_flushed", "last_activity"):
        if not hasattr(HTTPChannel, name):
            missing.append(f"HTTPChannel.{name}")
    if "url_scheme" not in dict(Adjustments._params):
        missing.append("Adjustments url_scheme")
    return missing


class HttpServer:
    """``app`` served by waitress on ``host``:``port`` (0: any free port) in a thread of
    its own; see the module docstring for the limits. ``max_request_body`` is the
    largest body read at all (STOW-RS's own limit is checked before that). ``tls``
    (:func:`tls_context`): serve HTTPS."""

    def __init__(self, app: Flask, host: str, port: int, *, max_request_body: int, threads: int = THREADS,
                 tls: ssl.SSLContext | None = None):
        if tls is not None and (missing := missing_tls_internals()):
            raise RuntimeError(f"HTTPS needs waitress internals this waitress lacks: {', '.join(missing)} "
                               "(see docs/upstream/README.md)")
        self.adj = Adjustments(
            host=host, port=port, threads=threads, connection_limit=CONNECTION_LIMIT,
            channel_timeout=int(IDLE_TIMEOUT_S), cleanup_interval=1, max_request_body_size=max_request_body + 1,
            asyncore_use_poll=True,  # select() fails once descriptors pass 1024
            expose_tracebacks=False, ident="axiom-flow", clear_untrusted_proxy_headers=True,
            url_scheme="https" if tls else "http",
        )
        self._server = _Server(app, adj=self.adj)
        self._server.flask_app = app
        if tls is not None:
            self._server.tls_context = tls
            self._server.channel_class = _TlsChannel
        self.tls = tls is not None
        self.host, self.port = self._server.effective_host, int(self._server.effective_port)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        if not self.tls and not is_loopback(self.host):
            # API keys, tokens and STOW-RS bodies would cross the network in clear
            log.warning("HTTP on %s:%d is reachable from other machines and is served without TLS: API keys, "
                        "tokens and instances cross the network unencrypted; pass --tls-cert/--tls-key "
                        "(AXIOM_TLS_CERT/AXIOM_TLS_KEY) to serve HTTPS, or bind 127.0.0.1", self.host, self.port)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket and every connection, then stop the threads."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread and self._thread.is_alive():
            # closed by the event loop's own thread (the map is not safe to change from
            # another); the loop ends when nothing is left in it
            try:
                self._server.trigger.pull_trigger(self._close_all)
            except OSError as exc:  # waitress closed its trigger after an error on it: close from here
                log.warning("HTTP server's wake-up pipe is closed (%s); closing its connections from this thread",
                            describe_os_error(exc))
            self._thread.join(5)
        self._close_all()
        self._server.task_dispatcher.shutdown(timeout=5)

    def _close_all(self) -> None:
        for dispatcher in list(self._server._map.values()):
            try:
                dispatcher.close()
            except OSError:
                pass
