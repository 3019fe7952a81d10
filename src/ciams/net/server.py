"""The DICOM listener: Verification, Storage and Query/Retrieve service class providers.

Services (PS3.4): Verification (A), Storage SCP for every storage SOP class (B),
Patient Root and Study Root Query/Retrieve FIND, MOVE and GET (C). Associations
from calling AE titles outside ``settings.dicom.allowed_calling_aes`` are rejected
with "calling AE title not recognized" (PS3.8 9.3.4, result 1, source 1, reason 3).
"""

from __future__ import annotations

import ctypes
import json
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer

from ciams.access import scope_of, upload_source
from ciams.archive import Archive
from ciams.config import Settings
from ciams.errors import DIMSE_OUT_OF_RESOURCES, DIMSE_UNABLE_TO_PROCESS, CiamsError, ConfigError
from ciams.net.access import DimseAccess
from ciams.net.part10 import part10
from ciams.net.query import MODELS, decode_identifier, model_of, parse_find
from ciams.net.reactor import (
    ArchiveAE,
    CheapCopyContexts,
    ReceivedStore,
    StorageRequestHandler,
)
from ciams.net.registry import AERegistry
from ciams.net.retrieve import STATUS_CANCEL, STATUS_PENDING, handle_get, handle_move
from ciams.net.status import query_error_status, status, store_status

log = logging.getLogger(__name__)

# Stored as received (PS3.5 Section 10 and Annex A). pynetdicom accepts, per context,
# the first syntax of this list that the requestor proposes: native syntaxes come
# first because the same contexts carry C-GET sub-operations, where we can always
# decompress a stored instance but never compress one. A sender that offers its
# compressed syntax in a context of its own (dcmtk, most PACS) still gets it accepted.
STORAGE_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
VERIFICATION = "1.2.840.10008.1.1"  # PS3.4 A.4
QUERY_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


class DispatchingServer(ThreadedAssociationServer):
    """The main process's listener with DICOM workers: it accepts every association and
    hands them round-robin to itself and to the worker processes (the descriptor goes
    over a Unix socket, SCM_RIGHTS), so N associations land evenly on the processes.
    The TLS handshake happens in the process that serves the association."""

    channels: list[socket.socket] = []

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        conn, address = self.socket.accept()
        return conn, address

    def process_request(self, request: Any, client_address: Any) -> None:
        turn = getattr(self, "_turn", 0)
        self._turn = (turn + 1) % (len(self.channels) + 1)
        if turn:
            try:
                socket.send_fds(
                    self.channels[turn - 1],
                    [json.dumps(list(client_address)).encode()],
                    [request.fileno()],
                )
                request.close()
                return
            except OSError:
                log.warning("DICOM worker %d unreachable; serving the association here", turn)
        serve_here(self, request, client_address)


def serve_here(server: ThreadedAssociationServer, conn: socket.socket, address: Any) -> None:
    """Serve an accepted connection in this process (TLS handshake first when set)."""
    if server.ssl_context is not None:
        try:
            conn = server.ssl_context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            log.info("TLS handshake with a DICOM peer failed")
            conn.close()
            return
    ThreadedAssociationServer.process_request(server, conn, tuple(address))


def receive_associations(server: ThreadedAssociationServer, channel: socket.socket) -> None:
    """In a DICOM worker: serve the connections the main process hands over, until it
    closes the channel."""
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(channel, 1024, 1)
        except OSError:
            return
        if not fds:
            return  # the main process closed the channel
        conn = socket.socket(fileno=fds[0])
        try:
            address = json.loads(message.decode())
        except ValueError:
            address = ["", 0]
        serve_here(server, conn, address)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h


def keep_large_buffers() -> None:
    """Let glibc reuse freed C-STORE-sized buffers instead of unmapping them.

    Each received instance passes through several buffers of its own size (PDU, DIMSE
    data set, Part 10 bytes, pixel data). Above glibc's mmap threshold, and in the
    per-thread arenas that parallel associations use, every one of them was a fresh
    mapping: about 340 page faults per 512 KiB instance and a third of the server's
    system time with four associations; 6 with this.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc
        log.debug("mallopt unavailable", exc_info=True)


def no_delay(event: Event) -> None:
    """EVT_CONN_OPEN: disable Nagle's algorithm. A C-STORE response is one small
    PDU; with Nagle on it waits for the peer's delayed ACK (up to 40 ms) before
    leaving, which caps a single association at a few dozen instances a second."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        log.debug("cannot set TCP_NODELAY", exc_info=True)


class DicomServer:
    """The archive's DIMSE side, started and stopped with the server process."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        *,
        dispatch_to: list[socket.socket] | None = None,
    ) -> None:
        self.archive = archive
        self.settings = settings
        # With DICOM workers: channels to them, to share the accepted associations.
        self.dispatch_to = dispatch_to or []
        self.registry = AERegistry(archive.sessions)
        self.access = DimseAccess(archive, settings)
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    def _make_ae(self) -> AE:
        cfg = self.settings.dicom
        try:
            ae = ArchiveAE(ae_title=cfg.ae_title)
            ae.require_calling_aet = list(cfg.allowed_calling_aes)
        except ValueError as exc:
            raise ConfigError(f"invalid DICOM AE title setting: {exc}") from exc
        ae.maximum_pdu_size = cfg.max_pdu
        ae.network_timeout = cfg.network_timeout
        ae.maximum_associations = cfg.max_associations
        ae.add_supported_context(VERIFICATION, QUERY_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # Both roles: a C-GET requestor proposes the SCP role for the storage
            # classes it wants to receive (PS3.4 C.4.3, SCP/SCU role selection).
            ae.add_supported_context(
                str(cx.abstract_syntax), STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        for uid in MODELS:
            ae.add_supported_context(uid, QUERY_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> int:
        """Listen on ``settings.dicom.host``/``port`` in background threads; returns the
        bound port (port 0 picks a free one)."""
        if self._server is not None:
            return self.port
        cfg = self.settings.dicom
        keep_large_buffers()
        ae = self._make_ae()
        # pynetdicom logs whole query identifiers (patient names, IDs) at INFO level.
        _config.LOG_REQUEST_IDENTIFIERS = self.settings.log_phi
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # pynetdicom's standard handlers format every PDU and DIMSE message for its
            # INFO/DEBUG log on every association; with that log off they only cost CPU.
            _config.LOG_HANDLER_LEVEL = "none"
        if not cfg.allowed_calling_aes:
            log.warning(
                "dicom.allowed_calling_aes is empty: associations from any calling AE "
                "title are accepted"
            )
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_RELEASED, self.access.association_ended),
            (evt.EVT_ABORTED, self.access.association_ended),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
        ]
        try:
            server = self._listen(ae, handlers)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for DICOM on {cfg.host}:{cfg.port}: {exc.strerror or exc}",
                hint="choose another dicom.port or stop the program using it",
            ) from exc
        self._ae, self._server = ae, server
        self.port = int(server.server_address[1])
        log.info("DICOM listener %s on %s:%d", cfg.ae_title, cfg.host, self.port)
        return self.port

    def _listen(self, ae: AE, handlers: list[Any]) -> ThreadedAssociationServer:
        """Like ``AE.start_server(block=False)``, with storage associations on
        :mod:`ciams.net.reactor`; the main process of DICOM workers dispatches."""
        cfg = self.settings.dicom
        server_class: type[ThreadedAssociationServer] = ThreadedAssociationServer
        if self.dispatch_to:
            server_class = type("Dispatching", (DispatchingServer,), {"channels": self.dispatch_to})
        server = ae.make_server(
            (cfg.host, cfg.port),
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
            server_class=server_class,
            request_handler=StorageRequestHandler,
        )
        server.contexts = CheapCopyContexts(server.contexts)
        thread = threading.Thread(
            target=server.serve_forever, name="ciams-dicom-acceptor", daemon=True
        )
        thread.start()
        ae._servers.append(server)  # so AE.shutdown() stops it like its own
        return server

    def _ssl_context(self) -> ssl.SSLContext | None:
        """DICOM TLS (PS3.15 B.1, the Basic TLS Secure Transport Connection Profile)."""
        tls = self.settings.tls
        if not (tls.enabled and tls.dicom):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            if tls.ca_file is not None:
                ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from exc
        if tls.require_client_cert:
            if tls.ca_file is None:
                raise ConfigError("tls.require_client_cert needs tls.ca_file")
            ctx.verify_mode = ssl.CERT_REQUIRED
        elif tls.ca_file is not None:
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    @property
    def server(self) -> ThreadedAssociationServer | None:
        """pynetdicom's running server (None when stopped)."""
        return self._server

    def stop(self) -> None:
        """Stop listening and abort open associations."""
        if self._ae is not None:
            self._ae.shutdown()
        self._ae, self._server = None, None

    # -- service handlers (each maps its outcome to a status in ciams.net.status) ------

    def _on_store(self, event: Event) -> Dataset:
        """EVT_C_STORE: ingest the bytes as received, never decoding the data set
        (the Part 10 header is framed by :func:`ciams.net.part10.part10`)."""
        try:
            principal = self.access.require(event, "upload")
        except CiamsError as exc:
            return status(exc.dimse_status, exc.message)
        try:
            requestor = event.assoc.requestor
            request = cast(C_STORE, event.request)
            data: bytes | bytearray
            if isinstance(request, ReceivedStore):
                data = request.part10
            else:
                data = part10(
                    str(request.AffectedSOPClassUID),
                    str(request.AffectedSOPInstanceUID),
                    str(event.context.transfer_syntax),
                    cast(BytesIO, request.DataSet).getbuffer(),  # no copy
                )
            result = self.archive.ingest(
                data,
                {
                    "interface": "dimse",
                    "calling_ae": requestor.ae_title,
                    "remote_address": requestor.address,
                    **upload_source(principal),
                },
            )
        except Exception:  # answer a status; the association goes on
            log.exception("C-STORE failed unexpectedly")
            return status(DIMSE_OUT_OF_RESOURCES, "internal error, see server log")
        if result.ok:
            self.access.stored(event.assoc, result.study_instance_uid)
        else:
            self.access.record(
                event, "upload", "failure", (result.study_instance_uid,), result.reason
            )
            log.warning(
                "C-STORE %s (%s), quarantine entry %s",
                result.status,
                result.error.code if result.error else "-",
                result.quarantine_id or "-",
            )
        return store_status(result)

    def _on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND: one pending response per match (PS3.4 C.4.1.1.3)."""
        try:
            principal = self.access.require(event, "query")
            model = model_of(event.request.AffectedSOPClassUID)
            request = parse_find(decode_identifier(event), model)
            cap = self.settings.archive.query_limit
            if cap:
                request.query.limit = cap + 1  # one more, to know whether matching was cut
            matches = self.archive.find(request.query, scope=scope_of(principal))
        except CiamsError as exc:
            yield query_error_status(exc), None
            return
        except Exception:  # answer a status; the association goes on
            log.exception("C-FIND failed unexpectedly")
            yield status(DIMSE_UNABLE_TO_PROCESS, "internal error, see server log"), None
            return
        studies: set[str] = set()
        sent = 0
        cut = ""
        try:
            for match in matches:
                if event.is_cancelled:
                    yield STATUS_CANCEL, None
                    return
                if cap and sent == cap:
                    # PS3.4 has no status for a cut answer; Orthanc's LimitFindResults
                    # ends with "matching terminated" too, which SCUs show as such.
                    cut = f", cut at archive.query_limit={cap} (more matched)"
                    log.warning("C-FIND %s: %d matches sent%s", request.query.level, sent, cut)
                    yield STATUS_CANCEL, None
                    return
                if match.get("StudyInstanceUID"):
                    studies.add(str(match.StudyInstanceUID))
                sent += 1
                yield STATUS_PENDING, request.response(match)
        finally:
            self.access.record(
                event,
                "query",
                "success",
                tuple(sorted(studies)),
                f"C-FIND {request.query.level}: {sent} matches sent{cut}",
                principal,
            )

    def _on_get(self, event: Event) -> Iterator[Any]:
        return handle_get(event, self.archive, self.access)

    def _on_move(self, event: Event) -> Iterator[Any]:
        return handle_move(
            event,
            self.archive,
            self.access,
            self.registry,
            [(evt.EVT_CONN_OPEN, no_delay)],
            self.settings.dicom.max_pdu,
        )
