"""C-MOVE and C-GET service class providers (PS3.4 C.4.2, C.4.3).

pynetdicom runs the C-STORE sub-operations and the pending/final responses; the
handlers here select the instances, propose presentation contexts for a C-MOVE
destination and hand over each stored instance as it was received, decompressed
only when the peer did not accept its stored transfer syntax.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context

from ciams.access import Principal, scope_of
from ciams.archive import Archive, InstanceRef
from ciams.errors import (
    DIMSE_UNABLE_TO_PROCESS,
    CiamsError,
    UnknownDestinationError,
)
from ciams.net.access import DimseAccess
from ciams.net.query import decode_identifier, model_of, retrieve_refs
from ciams.net.registry import AERegistry
from ciams.net.status import query_error_status, status

log = logging.getLogger(__name__)

STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
MAX_CONTEXTS = 128  # presentation contexts per association (PS3.8 9.3.2.2, odd IDs 1-255)


def _fail_early(assoc: Association, reply: Dataset) -> None:
    """Make the next C-MOVE/C-GET response on ``assoc`` carry ``reply``'s Status and
    Error Comment.

    pynetdicom builds the early failure responses itself (A801 for C-MOVE, a zero
    sub-operation success for C-GET) and offers no hook to add an Error Comment, so
    the one response it sends next is amended on its way out.
    """
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if isinstance(primitive, C_MOVE | C_GET):
            dimse.send_msg = original  # type: ignore[method-assign]
            response: Any = primitive
            response.Status = int(reply.Status)
            if "ErrorComment" in reply:
                response.ErrorComment = str(reply.ErrorComment)
        original(primitive, context_id)

    dimse.send_msg = send_msg  # type: ignore[method-assign]


def accepted_pairs(assoc: Association) -> set[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs we may send C-STORE requests on."""
    return {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in assoc.accepted_contexts
        if cx.as_scu and cx.transfer_syntax
    }


# Bytes per value of the binary VRs whose values pydicom leaves as raw bytes.
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _to_little_endian(ds: Dataset) -> None:
    """Re-encode a data set read as Explicit VR Big Endian as Explicit VR Little Endian.

    pydicom re-encodes parsed values itself but leaves the raw OW/OF/OL/OD/OV values
    to the caller (see ``pydicom.filewriter.dcmwrite``); they are byte-swapped here.
    """

    def swap(dataset: Dataset, elem: Any) -> None:
        width = _SWAP_WIDTH.get(elem.VR)
        if width and isinstance(elem.value, bytes) and len(elem.value) % width == 0:
            elem.value = (
                np.frombuffer(elem.value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
            )

    ds.walk(swap)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)


def load_for_send(archive: Archive, ref: InstanceRef, accepted: set[tuple[str, str]]) -> Dataset:
    """The stored instance, ready for a C-STORE sub-operation on ``accepted`` contexts."""
    ds = pydicom.dcmread(BytesIO(archive.read(ref)))
    stored = UID(ref.transfer_syntax_uid)
    if (ref.sop_class_uid, stored) in accepted:
        return ds
    if stored.is_compressed:
        # The peer cannot take the stored compressed syntax. It asked for this very
        # instance, so the SOP Instance UID is kept (the pixels are not changed further).
        ds.decompress(generate_instance_uid=False)
    elif not stored.is_little_endian:
        _to_little_endian(ds)  # pynetdicom converts only between little endian syntaxes
    return ds


# A SOP class no association ever negotiates: pynetdicom finds no presentation context
# for it and fails the sub-operation before sending anything.
_NEVER_NEGOTIATED = "1.2.826.0.1.3680043.10.1447.0.0"


def _unsendable(ref: InstanceRef) -> Dataset:
    """A stand-in for an instance that cannot be read. pynetdicom refuses it before any
    byte goes out (no presentation context), and so counts a failed sub-operation with
    this SOP Instance UID while the association stays in step; sending a stand-in data
    set instead could leave the peer answering a message we no longer wait for."""
    ds = Dataset()
    ds.SOPClassUID = _NEVER_NEGOTIATED
    ds.SOPInstanceUID = ref.sop_instance_uid
    return ds


def _sub_operations(
    archive: Archive,
    refs: list[InstanceRef],
    event: Event,
    accepted: Callable[[], set[tuple[str, str]]],
) -> Iterator[tuple[int, Dataset | None]]:
    """(status, dataset) for each sub-operation, stopping on C-CANCEL."""
    pairs: set[tuple[str, str]] | None = None
    for ref in refs:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        if pairs is None:
            pairs = accepted()
        try:
            ds = load_for_send(archive, ref, pairs)
        except Exception as exc:  # one unreadable instance must not end the retrieve
            log.error("cannot prepare stored file %s for sending: %s", ref.storage_key, exc)
            ds = _unsendable(ref)
        yield STATUS_PENDING, ds


def destination_contexts(refs: list[InstanceRef]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination: each SOP class with its stored
    transfer syntax first, then Explicit and Implicit VR Little Endian."""
    pairs = list(dict.fromkeys((r.sop_class_uid, r.transfer_syntax_uid) for r in refs))
    if len(pairs) > MAX_CONTEXTS:
        # Too many pairs: one context per SOP class with all its stored syntaxes.
        by_class: dict[str, list[str]] = {}
        for sop, ts in pairs:
            by_class.setdefault(sop, []).append(ts)
        groups = list(by_class.items())[:MAX_CONTEXTS]
    else:
        groups = [(sop, [ts]) for sop, ts in pairs]
    contexts = []
    for sop, syntaxes in groups:
        wanted = [*syntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        contexts.append(build_context(sop, list(dict.fromkeys(wanted))))
    return contexts


def _audit_retrieve(
    access: DimseAccess, event: Event, principal: Principal, refs: list[InstanceRef], what: str
) -> None:
    studies = tuple(sorted({r.study_instance_uid for r in refs}))
    access.record(
        event, "download", "success", studies, f"{what}: {len(refs)} instances", principal
    )


def handle_get(event: Event, archive: Archive, access: DimseAccess) -> Iterator[Any]:
    """EVT_C_GET: send the selected instances over the requestor's association."""
    try:
        principal = access.require(event, "download")
        model = model_of(event.request.AffectedSOPClassUID)
        refs = retrieve_refs(archive, decode_identifier(event), model, scope_of(principal))
        _audit_retrieve(access, event, principal, refs, "C-GET")
    except CiamsError as exc:
        _fail_early(event.assoc, query_error_status(exc))
        yield 0
        return
    except Exception:  # report, keep the association serving
        log.exception("C-GET request failed")
        _fail_early(event.assoc, status(DIMSE_UNABLE_TO_PROCESS, "internal error, see server log"))
        yield 0
        return
    yield len(refs)
    yield from _sub_operations(archive, refs, event, lambda: accepted_pairs(event.assoc))


def handle_move(
    event: Event,
    archive: Archive,
    access: DimseAccess,
    registry: AERegistry,
    sub_handlers: list[Any],
    max_pdu: int,
) -> Iterator[Any]:
    """EVT_C_MOVE: open an association to the registered destination and send the
    selected instances there."""
    title = str(cast(C_MOVE, event.request).MoveDestination or "").strip()
    try:
        principal = access.require(event, "download")
        destination = registry.get(title)
        # Only the AE's owner (or an administrator) may send there; to anyone else
        # another owner's AE answers like an unknown one.
        if destination is None or not (
            principal.is_admin or destination.owner == principal.username
        ):
            raise UnknownDestinationError(f"move destination {title!r} is not registered")
        model = model_of(event.request.AffectedSOPClassUID)
        refs = retrieve_refs(archive, decode_identifier(event), model, scope_of(principal))
        _audit_retrieve(access, event, principal, refs, f"C-MOVE to {title}")
    except CiamsError as exc:
        reply = query_error_status(exc)
        _fail_early(event.assoc, reply)
        yield None, None
        return
    except Exception:  # report, keep the association serving
        log.exception("C-MOVE request failed")
        _fail_early(event.assoc, status(DIMSE_UNABLE_TO_PROCESS, "internal error, see server log"))
        yield None, None
        return
    store_assocs: list[Association] = []

    def remember(sub: Event) -> None:
        store_assocs.append(sub.assoc)

    kwargs = {
        "contexts": destination_contexts(refs),
        "evt_handlers": [*sub_handlers, (evt.EVT_CONN_OPEN, remember)],
        "max_pdu": max_pdu,
    }
    yield destination.host, destination.port, kwargs
    yield len(refs)

    def accepted() -> set[tuple[str, str]]:
        return accepted_pairs(store_assocs[0]) if store_assocs else set()

    yield from _sub_operations(archive, refs, event, accepted)
