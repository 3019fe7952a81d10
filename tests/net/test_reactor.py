"""The storage associations' own reactor (ciams.net.reactor): which associations take
it, and that release, abort, a dropped connection, a protocol violation and the
network timeout end them cleanly while the server keeps serving."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any, cast

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from ciams.net.part10 import part10
from ciams.net.reactor import (
    ArchiveAE,
    CheapCopyContexts,
    HandoverDUL,
    StorageAssociation,
    store_success_pdu,
)
from tests.conftest import wait_until
from tests.corpus import make_instance
from tests.net.conftest import DicomNode

VERIFICATION = "1.2.840.10008.1.1"


@contextmanager
def associate(node: DicomNode, *contexts: str) -> Iterator[Association]:
    ae = AE(ae_title="REACTOR")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for uid in contexts:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def server_side(node: DicomNode) -> StorageAssociation:
    server = node.dicom._server
    assert server is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = list(server.active_associations)
        if found:
            (accepted,) = found
            assert isinstance(accepted, StorageAssociation)
            return accepted
        time.sleep(0.01)
    raise AssertionError("no association on the server")


def ct(n: int, **kw: Any) -> Dataset:
    return make_instance(instance_number=n, rows=32, columns=32, **kw)


def store_one(node: DicomNode, ds: Dataset) -> int:
    with associate(node, CTImageStorage) as assoc:
        status = assoc.send_c_store(ds)
        return int(status.Status)


def test_storage_association_takes_the_own_reactor(node: DicomNode) -> None:
    with associate(node, CTImageStorage, VERIFICATION) as assoc:
        accepted = server_side(node)
        assert wait_until(lambda: cast_dul(accepted).handed_over)
        assert assoc.send_c_echo().Status == 0
        for n in range(1, 4):
            assert assoc.send_c_store(ct(n)).Status == 0
    assert wait_until(lambda: not accepted.is_alive())
    assert accepted.is_released and not accepted.is_aborted
    assert node.archive.counts()["instances"] == 3


def test_mixed_association_stays_on_pynetdicom_reactor(node: DicomNode) -> None:
    """A context that may need C-CANCEL or sub-operations keeps pynetdicom's threads."""
    with associate(node, CTImageStorage, StudyRootQueryRetrieveInformationModelFind) as assoc:
        accepted = server_side(node)
        assert assoc.send_c_store(ct(1)).Status == 0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        assert [s.Status for s, _ in answers] == [0xFF00, 0x0000]
        assert not cast_dul(accepted).handed_over


def test_peer_abort_ends_the_association_and_server_keeps_serving(node: DicomNode) -> None:
    with associate(node, CTImageStorage) as assoc:
        accepted = server_side(node)
        assert assoc.send_c_store(ct(1)).Status == 0
        assoc.abort()
    assert wait_until(lambda: not accepted.is_alive())
    assert accepted.is_aborted
    assert store_one(node, ct(2)) == 0
    assert node.archive.counts()["instances"] == 2


def test_dropped_connection_ends_the_association(node: DicomNode) -> None:
    with associate(node, CTImageStorage) as assoc:
        accepted = server_side(node)
        assert assoc.send_c_store(ct(1)).Status == 0
        assoc.dul.socket.socket.close()  # type: ignore[union-attr]
        assert wait_until(lambda: not accepted.is_alive())
        assoc.kill()
    assert accepted.is_aborted
    assert store_one(node, ct(2)) == 0


def test_unexpected_pdu_is_answered_with_a_provider_abort(node: DicomNode) -> None:
    with associate(node, CTImageStorage) as assoc:
        accepted = server_side(node)
        assert wait_until(lambda: cast_dul(accepted).handed_over)
        # An A-ASSOCIATE-RQ PDU header in the data phase (PS3.8 9.3.1, type 0x01).
        assoc.dul.socket.send(b"\x01\x00\x00\x00\x00\x04\x00\x01\x00\x00")  # type: ignore[union-attr]
        assert wait_until(lambda: assoc.is_aborted)
    assert wait_until(lambda: not accepted.is_alive())
    assert accepted.is_aborted
    assert store_one(node, ct(1)) == 0


def test_network_timeout_aborts_an_idle_association(
    make_node: Callable[..., DicomNode],
) -> None:
    node = make_node(dicom={"network_timeout": 1.0})
    with associate(node, CTImageStorage) as assoc:
        accepted = server_side(node)
        assert assoc.send_c_store(ct(1)).Status == 0
        assert wait_until(lambda: assoc.is_aborted, seconds=15)
    assert accepted.is_aborted
    assert store_one(node, ct(2)) == 0


def test_store_failure_status_on_the_own_reactor(node: DicomNode) -> None:
    """A refused instance answers a failure status and the association goes on."""
    with associate(node, CTImageStorage) as assoc:
        bad = ct(1)
        del bad.StudyInstanceUID
        status = assoc.send_c_store(bad)
        assert status.Status in (0xA900, 0xC000, 0xC001, 0xC002) or status.Status >= 0xA000
        assert "StudyInstanceUID" in str(status.get("ErrorComment", ""))
        assert assoc.send_c_store(ct(2)).Status == 0
    assert node.archive.counts()["instances"] == 1


def cast_dul(assoc: Association) -> HandoverDUL:
    assert isinstance(assoc.dul, HandoverDUL)
    return assoc.dul


def test_data_set_over_many_pdus(make_node: Callable[..., DicomNode]) -> None:
    """A 512 KiB image in 16 KiB PDUs is reassembled byte for byte."""
    node = make_node(dicom={"max_pdu": 16384})
    ds = make_instance(rows=512, columns=512)
    with associate(node, CTImageStorage) as assoc:
        accepted = server_side(node)
        assert assoc.send_c_store(ds).Status == 0
        assert cast_dul(accepted).handed_over
    (ref,) = node.archive.instances(sop_uid=str(ds.SOPInstanceUID))
    assert node.archive.dataset(ref).PixelData == ds.PixelData


def test_per_association_context_copies_are_independent(node: DicomNode) -> None:
    server = node.dicom._server
    assert server is not None
    originals = server.contexts
    assert isinstance(originals, CheapCopyContexts)
    copies = copy.deepcopy(originals)
    assert copies == list(originals)
    assert all(a is not b for a, b in zip(copies, originals, strict=True))
    copies[0].transfer_syntax.append(UID("1.2.3.4"))
    assert "1.2.3.4" not in originals[0].transfer_syntax


@pytest.mark.parametrize(
    ("sop_instance", "message_id"),
    [("1.2.3.4.5", 1), ("1.2.826.0.1.3680043.8.498.123456789012345678901234", 65535)],
)
def test_store_success_pdu_is_what_pynetdicom_encodes(sop_instance: str, message_id: int) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = 0x0000
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(7, 16384))
    pdu = P_DATA_TF()
    pdu.from_primitive(pdata)
    assert store_success_pdu(7, CTImageStorage, sop_instance, message_id) == pdu.encode()


def test_failure_responses_still_go_through_pynetdicom(node: DicomNode) -> None:
    """Only plain success is encoded directly; a warning keeps its comment."""
    ds = ct(1)
    assert store_one(node, ds) == 0
    changed = ct(1, study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID))
    changed.SOPInstanceUID = ds.SOPInstanceUID
    changed.PatientName = "Changed^Bytes"
    with associate(node, CTImageStorage) as assoc:
        status = assoc.send_c_store(changed)
    assert status.Status == 0xB000
    assert "other content" in str(status.ErrorComment)


def _pdvs(primitive: Any, max_pdu: int) -> list[tuple[int, int, memoryview]]:
    """The PDVs pynetdicom's encoder sends for ``primitive``, as (context, control, PDV
    data with its control header)."""
    from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ

    message = C_STORE_RQ() if isinstance(primitive, C_STORE) else C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return [
        (context_id, data[0], memoryview(data))
        for pdata in message.encode_msg(5, max_pdu)
        for context_id, data in pdata.presentation_data_value_list
    ]


@pytest.mark.parametrize("max_pdu", [0, 40, 16382])
def test_c_store_requests_are_assembled_as_pynetdicom_encodes_them(max_pdu: int) -> None:
    """Fragmented command sets and data sets (a 40-byte PDU splits both) decode into
    the request pynetdicom's own decoder would build."""
    from ciams.net.reactor import MessageAssembly

    sent = C_STORE()
    sent.MessageID = 7
    sent.AffectedSOPClassUID = CTImageStorage
    sent.AffectedSOPInstanceUID = "1.2.3.4.5"
    sent.Priority = 2
    sent.MoveOriginatorApplicationEntityTitle = "MOVER"
    sent.MoveOriginatorMessageID = 3
    sent.DataSet = BytesIO(b"\x08\x00\x18\x00" + bytes(range(256)) * 3)
    assembly = MessageAssembly({5: ExplicitVRLittleEndian}.get)
    pdvs = _pdvs(sent, max_pdu)
    if max_pdu == 40:
        assert sum(1 for _, control, _ in pdvs if control & 1) > 1  # a split command set
    results = [assembly.add(cx, control, data) for cx, control, data in pdvs]
    assert results[:-1] == [None] * (len(results) - 1)
    got = results[-1]
    assert got is not None
    for name in (
        "MessageID",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "Priority",
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
    ):
        assert getattr(got, name) == getattr(sent, name), name
    assert got.DataSet is not None and sent.DataSet is not None
    assert got.DataSet.getvalue() == sent.DataSet.getvalue()
    assert got.part10 == part10(
        CTImageStorage, "1.2.3.4.5", ExplicitVRLittleEndian, sent.DataSet.getvalue()
    )
    assert got._context_id == 5
    assert not assembly.forwarded


def test_c_store_on_an_unknown_context_goes_to_pynetdicom() -> None:
    """No accepted context, no Part 10 header: pynetdicom's decoder gets the message
    (and the association then aborts as it would on pynetdicom's reactor)."""
    from ciams.net.reactor import MessageAssembly

    sent = C_STORE()
    sent.MessageID = 1
    sent.AffectedSOPClassUID = CTImageStorage
    sent.AffectedSOPInstanceUID = "1.2.3"
    sent.DataSet = BytesIO(b"\x08\x00\x18\x00\x00\x00\x00\x00")
    no_contexts: dict[int, str] = {}
    assembly = MessageAssembly(no_contexts.get)
    assert [assembly.add(*pdv) for pdv in _pdvs(sent, 0)] == [None, None]
    assert assembly.complete_for_pynetdicom
    assert [control[0] for _, control in assembly.take_forwarded()] == [0x03, 0x02]


def test_other_messages_go_whole_to_pynetdicom() -> None:
    """A C-ECHO (or anything but a C-STORE with a data set) is handed on unchanged."""
    from pynetdicom.dimse_primitives import C_ECHO

    from ciams.net.reactor import MessageAssembly

    echo = C_ECHO()
    echo.MessageID = 9
    echo.AffectedSOPClassUID = VERIFICATION
    assembly = MessageAssembly({5: ExplicitVRLittleEndian}.get)
    for cx, control, data in _pdvs(echo, 40):
        assert assembly.add(cx, control, data) is None
    assert assembly.complete_for_pynetdicom
    (forwarded,) = assembly.take_forwarded()
    primitive = P_DATA()
    primitive.presentation_data_value_list = cast(Any, [forwarded])
    from pynetdicom.dimse_messages import DIMSEMessage

    message = DIMSEMessage()
    assert message.decode_msg(primitive)
    assert message.command_set.MessageID == 9
    assert not assembly.forwarded and not assembly.complete_for_pynetdicom


def test_c_store_with_a_value_pynetdicom_refuses_goes_to_pynetdicom() -> None:
    """A SOP Instance UID over 64 characters: no request is built here; pynetdicom's
    decoder gets the message (and aborts the association, as on its own reactor)."""
    import struct

    from ciams.net.reactor import MessageAssembly

    def element(number: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0x0000, number, len(value)) + value

    long_uid = b"1." + b"2" * 70
    command = b"".join(
        (
            element(0x0002, CTImageStorage.encode() + b"\x00"),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", 1)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, long_uid),
        )
    )
    assembly = MessageAssembly({1: ExplicitVRLittleEndian}.get)
    assert assembly.add(1, 0x03, memoryview(b"\x03" + command)) is None
    assert assembly.add(1, 0x02, memoryview(b"\x02" + b"\x08\x00\x18\x00")) is None
    assert assembly.complete_for_pynetdicom
    forwarded = assembly.take_forwarded()
    assert [pdv[0] for _, pdv in forwarded] == [0x03, 0x02]
    assert long_uid in forwarded[0][1]


def test_a_waiting_sender_gets_its_response_not_the_reactor(node: DicomNode) -> None:
    """pynetdicom's reactor may pass its pause checkpoint just before a send_*() clears
    it; the response must then still reach the sender (it was dropped as "unexpected",
    and the sender failed after the DIMSE timeout)."""
    ae = ArchiveAE(ae_title="RACE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        # What send_*() does first, then a response arriving while the reactor is in
        # the middle of its loop, as in the race.
        assoc._reactor_checkpoint.clear()
        assert wait_until(lambda: assoc._is_paused, seconds=5)
        response = C_STORE()
        response.MessageIDBeingRespondedTo = 1
        response.Status = 0
        assoc.dimse.msg_queue.put((1, response))
        assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's read
        assert assoc.dimse.get_msg(block=True) == (1, response)  # the sender's read
        assoc._reactor_checkpoint.set()
        assert assoc.send_c_echo().Status == 0x0000  # the association goes on
    finally:
        assoc.release()
