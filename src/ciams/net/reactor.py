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
import struct
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE, P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import RequestHandler

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BBL")
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
        raw = self.dul.socket.socket  # type: ignore[union-attr]
        sock = cast(socket.socket, raw)
        sock.settimeout(self.network_timeout)
        header = bytearray(6)
        limit = (self.acceptor.maximum_length or 0) or 0xFFFFFFFF
        while not self.is_aborted:
            try:
                if not _recv_into(sock, memoryview(header)):
                    log.info("DICOM peer closed the connection without releasing")
                    self._ended(aborted=True)
                    return
                pdu_type, _, length = _HEADER.unpack(header)
                if pdu_type == _P_DATA_TF and length <= limit + 6:
                    body = bytearray(6 + length)
                    body[:6] = header
                    if not _recv_into(sock, memoryview(body)[6:]):
                        self._ended(aborted=True)
                        return
                    self._on_data(body)
                elif pdu_type == _A_RELEASE_RQ and length == 4:
                    _recv_into(sock, memoryview(bytearray(4)))
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
            except TimeoutError:
                log.error("Network timeout reached")
                self._provider_abort()
                return
            except OSError as exc:
                log.info("DICOM connection lost: %s", exc)
                self._ended(aborted=True)
                return

    def _on_data(self, body: bytearray) -> None:
        pdu = P_DATA_TF()
        pdu.decode(memoryview(body))  # type: ignore[arg-type]  # zero-copy slices
        self.dimse.receive_primitive(pdu.to_primitive())
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


def _recv_into(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from the socket; False when the peer closed it first."""
    while view:
        n = sock.recv_into(view)
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
        return assoc
