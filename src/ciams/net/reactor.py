"""A synchronous reactor for storage associations.

pynetdicom runs every association on two threads that poll each other through queues
every millisecond (the DUL reactor reads the socket; the association reactor serves
DIMSE messages). For a C-STORE stream that costs about a third of the server's CPU per
instance and adds two polling delays to every round trip (profile in the issue 2 note).

An association whose accepted presentation contexts are all Storage (SCP role only)
or Verification cannot carry anything that needs the two threads: no C-CANCEL to
watch for, no sub-operations to wait on. For those, once pynetdicom has negotiated
the association and sent A-ASSOCIATE-AC, its DUL thread steps aside and the
association thread reads the PDUs itself with blocking reads. Everything else stays
pynetdicom's: PDU and DIMSE decoding and encoding, the service classes, the event
handlers, the statuses. Other associations (queries, retrieves, role selection) run on
pynetdicom's reactor unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE, P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import RequestHandler

from ciams.net.part10 import pad_ui, part10_header

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BBL")
_PDV = struct.Struct(">LBB")  # PDV item length, presentation context ID, control header
_COMMAND_ELEMENT = struct.Struct("<HHL")
_P_DATA_TF, _A_RELEASE_RQ, _A_ABORT = 0x04, 0x05, 0x07
# PS3.8 9.3.8: A-ABORT source 2 (service provider), reason 2 (unexpected PDU).
_UNEXPECTED_PDU = 0x02


def storage_only(assoc: Association) -> bool:
    """Whether every accepted context is Storage with us as SCP only, or Verification."""
    contexts = list(assoc._accepted_cx.values())
    if not contexts:
        return False
    for cx in contexts:
        service = uid_to_service_class(str(cx.abstract_syntax))
        if service is VerificationServiceClass:
            continue
        if not issubclass(service, StorageServiceClass) or cx.as_scu or not cx.as_scp:
            return False
    return True


class HandoverDUL(DULServiceProvider):
    """pynetdicom's DUL that stops its thread, without reading any data PDU, once the
    A-ASSOCIATE-AC of a storage-only association is sent; PDUs to send then go out
    directly on the caller's thread."""

    handed_over = False

    def _is_transport_event(self) -> bool:
        if self.state_machine.current_state == "Sta6" and storage_only(self.assoc):
            self.handed_over = True
            self._kill_thread = True
            return False
        return super()._is_transport_event()

    def send_pdu(self, primitive: Any) -> None:
        if not self.handed_over:
            super().send_pdu(primitive)
            return
        pdu: Any
        if isinstance(primitive, P_DATA):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
        elif isinstance(primitive, (A_ABORT, A_P_ABORT)):
            pdu = A_ABORT_RQ()
            pdu.from_primitive(primitive)
            self.assoc.is_aborted = True
        elif isinstance(primitive, A_RELEASE):
            pdu = A_RELEASE_RP() if primitive.result is not None else A_RELEASE_RQ()
        else:
            raise TypeError(f"cannot send {type(primitive).__name__} on a storage association")
        sock = cast(socket.socket, self.socket.socket)  # type: ignore[union-attr]
        sock.sendall(pdu.encode())


def _implicit(group_elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, group_elem, len(value)) + value


def store_success_pdu(context_id: int, sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """A P-DATA-TF PDU holding a successful C-STORE-RSP (PS3.7 9.3.1.2, Implicit VR
    Little Endian command set; one last-fragment command PDV, PS3.8 E.2), byte for
    byte what pynetdicom encodes through pydicom, at a fraction of the cost."""
    body = b"".join(
        (
            _implicit(0x0002, pad_ui(sop_class)),
            _implicit(0x0100, struct.pack("<H", 0x8001)),  # C-STORE-RSP
            _implicit(0x0120, struct.pack("<H", message_id)),
            _implicit(0x0800, struct.pack("<H", 0x0101)),  # no data set
            _implicit(0x0900, struct.pack("<H", 0x0000)),  # success
            _implicit(0x1000, pad_ui(sop_instance)),
        )
    )
    command = _implicit(0x0000, struct.pack("<I", len(body))) + body
    pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv


class SenderFirstDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, leaving a response to the ``send_*()`` waiting for it.

    pynetdicom pauses its association reactor while a ``send_*()`` call waits for the
    response, but the pause handshake has a gap: the reactor may already be past its
    checkpoint, take the response off the queue, log "Received unexpected C-STORE
    service message" and drop it, and the sender then fails after the DIMSE timeout.
    Seen here as a C-MOVE sub-operation failing on a loaded machine. While a sender is
    active (the checkpoint is cleared) the reactor's non-blocking read gets nothing.
    """

    def get_msg(self, block: bool = False) -> Any:
        if not block and not self.assoc._reactor_checkpoint.is_set():
            return None, None
        return super().get_msg(block)


class ArchiveAE(AE):
    """pynetdicom's AE, whose requested associations (C-MOVE sub-operations, sends to
    remote AEs) use :class:`SenderFirstDIMSE`."""

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        assoc = super().associate(*args, **kwargs)
        # No factory hook for the DIMSE provider either; re-classed before any send_*().
        assoc.dimse.__class__ = SenderFirstDIMSE
        return assoc


class StorageDIMSE(SenderFirstDIMSE):
    """pynetdicom's DIMSE provider; on a handed-over association a successful C-STORE
    response is encoded directly (pydicom encoded that command set twice per image)."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        dul = self.assoc.dul
        if (
            isinstance(primitive, C_STORE)
            and isinstance(dul, HandoverDUL)
            and dul.handed_over
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status == 0x0000
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
        ):
            pdu = store_success_pdu(
                context_id,
                str(primitive.AffectedSOPClassUID),
                str(primitive.AffectedSOPInstanceUID),
                int(primitive.MessageIDBeingRespondedTo),
            )
            if not self.maximum_pdu_size or len(pdu) - 6 <= self.maximum_pdu_size:
                cast(socket.socket, dul.socket.socket).sendall(pdu)  # type: ignore[union-attr]
                return
        super().send_msg(primitive, context_id)


class StorageAssociation(Association):
    """An acceptor that serves storage-only associations on its own thread."""

    def _run_reactor(self) -> None:
        dul = cast(HandoverDUL, self.dul)
        if not storage_only(self):
            super()._run_reactor()
            return
        # The DUL decides the same from the same contexts, right after sending the AC.
        dul.join(timeout=max(self.acse_timeout or 30, 30))
        if dul.is_alive() or not dul.handed_over:
            log.error("DUL thread did not hand over the storage association; aborting")
            self.abort()
            return
        try:
            self._serve_storage()
        finally:
            self.is_established = False
            self.kill()

    def _serve_storage(self) -> None:
        self._messages = MessageAssembly(self._context_syntax)
        sock = cast(socket.socket, self.dul.socket.socket)  # type: ignore[union-attr]
        reader = PduReader(sock, self.network_timeout)
        limit = (self.acceptor.maximum_length or 0) or 0xFFFFFFFF
        while not self.is_aborted:
            try:
                header = reader.header()
                if header is None:
                    log.info("DICOM peer closed the connection without releasing")
                    self._ended(aborted=True)
                    return
                pdu_type, length = header
                if pdu_type == _P_DATA_TF and length <= limit + 6:
                    pdu = reader.body(length)
                    if pdu is None:
                        self._ended(aborted=True)
                        return
                    self._on_data(pdu)
                elif pdu_type == _A_RELEASE_RQ and length == 4:
                    reader.body(4)
                    self.acse.send_release(is_response=True)
                    self.is_released = True
                    self._ended(aborted=False)
                    return
                elif pdu_type == _A_ABORT:
                    self._ended(aborted=True)
                    return
                else:
                    log.warning("unexpected PDU type 0x%02X (%d bytes); aborting", pdu_type, length)
                    self._provider_abort()
                    return
            except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_RCVTIMEO expired
                log.error("Network timeout reached")
                self._provider_abort()
                return
            except OSError as exc:
                log.info("DICOM connection lost: %s", exc)
                self._ended(aborted=True)
                return

    def _context_syntax(self, context_id: int) -> str | None:
        cx = self._accepted_cx.get(context_id)
        return str(cx.transfer_syntax[0]) if cx is not None and cx.transfer_syntax else None

    def _on_data(self, pdu: memoryview) -> None:
        """Serve the PDVs of one P-DATA-TF PDU (PS3.8 9.3.5, E.2).

        C-STORE requests are assembled and decoded here; any other message (C-ECHO,
        or a request this association cannot serve) goes to pynetdicom's DIMSE layer,
        which answers or aborts as it would on its own reactor."""
        messages = self._messages
        end, off = len(pdu), 6
        while off < end:
            if off + 6 > end:
                self._provider_abort()
                return
            length, context_id, control = _PDV.unpack_from(pdu, off)
            stop = off + 4 + length
            if length < 2 or stop > end:
                log.warning("malformed PDV in a P-DATA-TF PDU; aborting")
                self._provider_abort()
                return
            request = messages.add(context_id, control, pdu[off + 5 : stop])
            off = stop
            if request is not None:
                self._serve_request(request, context_id)
            elif messages.complete_for_pynetdicom:
                self._forward(messages.take_forwarded())
            if self.is_aborted or not self.is_established:
                return
        if messages.forwarded:  # part of a long message: pynetdicom keeps assembling it
            self._forward(messages.take_forwarded())

    def _forward(self, pdvs: list[list[Any]]) -> None:
        primitive = P_DATA()
        # pynetdicom's setter insists on [ID, PDV] lists (its annotation says tuples).
        primitive.presentation_data_value_list = cast(Any, pdvs)
        self.dimse.receive_primitive(primitive)
        if not self.dul.event_queue.empty():  # Evt19: pynetdicom could not decode it
            self._provider_abort()
            return
        while True:
            context_id, msg = self.dimse.get_msg(block=False)
            if msg is None:
                return
            self._serve_request(msg, cast(int, context_id))

    def _provider_abort(self) -> None:
        primitive = A_P_ABORT()
        primitive.provider_reason = _UNEXPECTED_PDU
        with contextlib.suppress(OSError):
            self.dul.send_pdu(primitive)
        self._ended(aborted=True)

    def _ended(self, *, aborted: bool) -> None:
        self.is_established = False
        if aborted:
            self.is_aborted = True
            evt.trigger(self, evt.EVT_ABORTED, {})
        else:
            evt.trigger(self, evt.EVT_RELEASED, {})


# Command Field values (PS3.7 E.1).
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101


def decode_command(encoded: bytes) -> dict[int, bytes] | None:
    """The elements of a command set (group 0000, always Implicit VR Little Endian,
    PS3.7 6.3.1) as raw values by element number; None when it is not well formed."""
    fields: dict[int, bytes] = {}
    off, end = 0, len(encoded)
    while off < end:
        if off + 8 > end:
            return None
        group, element, length = _COMMAND_ELEMENT.unpack_from(encoded, off)
        off += 8
        if group != 0x0000 or off + length > end:
            return None
        fields[element] = encoded[off : off + length]
        off += length
    return fields


def _us(raw: bytes | None) -> int | None:
    return int.from_bytes(raw[:2], "little") if raw is not None and len(raw) >= 2 else None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("ascii", "replace").strip(" \x00") if raw is not None else None


class ReceivedStore(C_STORE):
    """A C-STORE request whose data set was received straight behind its Part 10 header
    (:attr:`part10`): the handler stores those bytes without another copy."""

    part10: bytearray
    header_length: int
    # The data set is always there; pynetdicom's validity check would copy it to look.
    REQUEST_KEYWORDS = tuple(  # type: ignore[assignment]
        k for k in C_STORE.REQUEST_KEYWORDS if k != "DataSet"
    )

    @property
    def DataSet(self) -> BytesIO | None:
        # pynetdicom's view of the data set, copied only for a handler that asks.
        return BytesIO(self.part10[self.header_length :])

    @DataSet.setter
    def DataSet(self, value: BytesIO | None) -> None:
        if value is not None:
            raise TypeError("a received C-STORE request keeps its data set in part10")


def store_request(
    fields: dict[int, bytes], context_id: int, data: bytearray, header_length: int
) -> ReceivedStore | None:
    """pynetdicom's C-STORE request primitive from decoded command fields, as its own
    decoder would build it, over ``data`` (Part 10 header, then the data set); None when
    a required field is missing."""
    message_id = _us(fields.get(0x0110))
    sop_class, sop_instance = _text(fields.get(0x0002)), _text(fields.get(0x1000))
    if message_id is None or not sop_class or not sop_instance:
        return None
    req = ReceivedStore()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = _us(fields.get(0x0700)) or 0
    originator = _text(fields.get(0x1030))
    if originator:
        req.MoveOriginatorApplicationEntityTitle = originator
    originator_id = _us(fields.get(0x1031))
    if originator_id is not None:
        req.MoveOriginatorMessageID = originator_id
    req.part10, req.header_length = data, header_length
    req._context_id = context_id
    return req


class MessageAssembly:
    """Reassembles DIMSE messages from PDVs (PS3.8 E.2).

    A C-STORE request is decoded here: its command set is a handful of fixed elements,
    and pynetdicom's general decoder (a pydicom data set per command, fragments copied
    twice) cost more than the rest of the association's work. Every other message is
    handed on, whole PDVs at a time, to pynetdicom's decoder (``take_forwarded``)."""

    def __init__(self, transfer_syntax: Callable[[int], str | None]) -> None:
        self._transfer_syntax = transfer_syntax  # of an accepted context ID, else None
        self._command = bytearray()
        self._store: tuple[int, dict[int, bytes], bytearray, int] | None = None
        self._forwarding = False
        self.forwarded: list[list[Any]] = []
        self.complete_for_pynetdicom = False

    def add(self, context_id: int, control: int, fragment: memoryview) -> ReceivedStore | None:
        """Take one PDV (``fragment`` starts with its control header); returns a
        complete C-STORE request when this PDV completed one."""
        last = bool(control & 0x02)
        if self._forwarding:
            self.forwarded.append([context_id, bytes(fragment)])
            if last and not control & 0x01:  # the data set's last fragment
                self._forwarding, self.complete_for_pynetdicom = False, True
            return None
        if control & 0x01:  # command
            self._command += fragment[1:]
            if not last:
                return None
            encoded = bytes(self._command)
            self._command.clear()
            fields = decode_command(encoded)
            has_data = fields is not None and _us(fields.get(0x0800)) != _NO_DATA_SET
            if fields is not None and has_data and _us(fields.get(0x0100)) == _C_STORE_RQ:
                header = self._header(context_id, fields)
                if header is not None:
                    self._store = (context_id, fields, bytearray(header), len(header))
                    return None
            self.forwarded.append([context_id, b"\x03" + encoded])
            self._forwarding = has_data
            self.complete_for_pynetdicom = not has_data
            return None
        if self._store is None:
            # A data set with no command: pynetdicom decides (it treats it as an error).
            self.forwarded.append([context_id, bytes(fragment)])
            self.complete_for_pynetdicom = True
            return None
        store_context, fields, data, header_length = self._store
        data += fragment[1:]
        if not last:
            return None
        self._store = None
        try:
            request = store_request(fields, store_context, data, header_length)
        except ValueError:  # a value pynetdicom's setters refuse (a UID over 64 characters)
            request = None
        if request is None:  # let pynetdicom's decoder reject it as it would
            self.forwarded.append([store_context, b"\x03" + _encode_fields(fields)])
            self.forwarded.append([store_context, b"\x02" + data[header_length:]])
            self.complete_for_pynetdicom = True
        return request

    def _header(self, context_id: int, fields: dict[int, bytes]) -> bytes | None:
        """The Part 10 header the data set will be stored behind; None when the context
        or the UIDs are missing (pynetdicom's decoder then rejects the request)."""
        transfer_syntax = self._transfer_syntax(context_id)
        sop_class, sop_instance = _text(fields.get(0x0002)), _text(fields.get(0x1000))
        if not transfer_syntax or not sop_class or not sop_instance:
            return None
        try:
            return part10_header(sop_class, sop_instance, transfer_syntax)
        except UnicodeEncodeError:
            return None

    def take_forwarded(self) -> list[list[Any]]:
        """The PDVs for pynetdicom since the last call."""
        pdvs, self.forwarded = self.forwarded, []
        self.complete_for_pynetdicom = False
        return pdvs


def _encode_fields(fields: dict[int, bytes]) -> bytes:
    return b"".join(
        _COMMAND_ELEMENT.pack(0x0000, element, len(value)) + value
        for element, value in fields.items()
    )


class PduReader:
    """Reads whole PDUs into one buffer reused for the association (pynetdicom's DIMSE
    layer copies what it keeps, so nothing refers to the buffer after a PDU is served).

    On plain TCP each PDU part is one ``recv(MSG_WAITALL)`` and the network timeout is
    the socket's ``SO_RCVTIMEO``: a Python-level timeout would poll before every
    partial read, about a dozen extra system calls and GIL hand-overs per image."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self.sock = sock
        self.flags = 0
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(timeout)  # SSL sockets take no recv flags
        else:
            sock.settimeout(None)
            self.flags = socket.MSG_WAITALL
            if timeout:
                seconds = int(timeout)
                micro = int((timeout - seconds) * 1_000_000)
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micro)
                )
        self.buf = bytearray(65536)

    def header(self) -> tuple[int, int] | None:
        """The next PDU's type and length; None when the peer closed the connection."""
        if not self._fill(memoryview(self.buf)[:6]):
            return None
        pdu_type, _, length = _HEADER.unpack_from(self.buf)
        return pdu_type, length

    def body(self, length: int) -> memoryview | None:
        """The whole PDU (header included) once its ``length`` bytes have arrived."""
        need = 6 + length
        if len(self.buf) < need:
            grown = bytearray(need)
            grown[:6] = self.buf[:6]
            self.buf = grown
        view = memoryview(self.buf)[:need]
        return view if self._fill(view[6:]) else None

    def _fill(self, view: memoryview) -> bool:
        while view:
            n = self.sock.recv_into(view, len(view), self.flags)
            if not n:
                return False
            view = view[n:]
        return True


class CheapCopyContexts(list[PresentationContext]):
    """The server's supported contexts. pynetdicom deep-copies them for every
    association; for our ~190 contexts of 4-13 syntaxes that took 0.3 s of CPU per
    association. Their only mutable part is the syntax list, so copy just that."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for cx in self:
            new = copy.copy(cx)
            new._transfer_syntax = list(cx._transfer_syntax)
            copies.append(new)
        return copies


class StorageRequestHandler(RequestHandler):
    """pynetdicom's request handler, creating :class:`StorageAssociation` acceptors."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom builds both objects itself and has no factory hook for them; the
        # subclasses add no state, so re-classing the fresh objects is safe.
        assoc.__class__ = StorageAssociation
        assoc.dul.__class__ = HandoverDUL
        assoc.dimse.__class__ = StorageDIMSE
        return assoc
