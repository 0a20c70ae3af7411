"""A DICOM requestor that writes its PDUs by hand (PS3.8 9.3), for sending what a
well-behaved peer never would: bare connections, oversized or truncated PDUs, data sets
cut short, resets. PDUs are encoded and decoded with pynetdicom's own PDU classes."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, Verification

A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE, P_DATA_TF_TYPE, A_RELEASE_RP_TYPE, A_ABORT_TYPE = 0x02, 0x03, 0x04, 0x06, 0x07
C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030
NO_DATA_SET, DATA_SET_PRESENT = 0x0101, 0x0000


def connect(port: int, *, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the listener on 127.0.0.1 from ``source`` (any 127.x.y.z
    address is loopback: a second source address without a second machine)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or unplugged peer's stack does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the other end closed (EOF or reset) within ``timeout``; data read
    meanwhile (an A-ABORT, say) is skipped."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False


@dataclass
class Response:
    status: int
    error_comment: str | None
    command: Dataset


class RawAssociation:
    """One association, PDU by PDU. ``contexts``: (context id, abstract syntax,
    transfer syntax)."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", called_ae: str = "AXIOM",
                 calling_ae: str = "HOSTILE", max_pdu: int = 16384,
                 contexts=((1, CTImageStorage, ExplicitVRLittleEndian), (3, Verification, ImplicitVRLittleEndian))):
        self.sock = connect(port, source=source)
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.max_pdu = max_pdu
        self.contexts = contexts
        self.peer_max_pdu = 0
        self.accepted: set[int] = set()
        self._message_id = 0

    # --- PDUs
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes]:
        """(PDU type, whole PDU) of the next PDU; (0, b"") when the connection closed."""
        header = self._read_exactly(6)
        if len(header) < 6:
            return 0, b""
        pdu_type, _, length = struct.unpack(">BBL", header)
        return pdu_type, header + self._read_exactly(length)

    def _read_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            try:
                chunk = self.sock.recv(min(n - len(data), 65536))
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def associate(self) -> int:
        """Send the A-ASSOCIATE-RQ; returns the type of the PDU that answered it."""
        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = self.calling_ae
        primitive.called_ae_title = self.called_ae
        contexts = []
        for context_id, abstract, syntax in self.contexts:
            cx = build_context(abstract, [syntax])
            cx.context_id = context_id
            contexts.append(cx)
        primitive.presentation_context_definition_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.0"
        primitive.user_information = [max_length, implementation]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(primitive)
        try:
            self.send(pdu.encode())
        except OSError:  # refused: closed or reset before the request went out
            return 0
        pdu_type, data = self.read_pdu()
        if pdu_type == A_ASSOCIATE_AC_TYPE:
            ac = A_ASSOCIATE_AC()
            ac.decode(data)
            self.accepted = {item.context_id for item in ac.presentation_context if item.result == 0}
            for item in ac.user_information.user_data:
                if hasattr(item, "maximum_length_received"):
                    self.peer_max_pdu = item.maximum_length_received
        return pdu_type

    def pdata_header(self, length: int) -> bytes:
        """A P-DATA-TF PDU's header announcing ``length`` bytes (PS3.8 9.3.5)."""
        return struct.pack(">BBL", P_DATA_TF_TYPE, 0, length)

    def send_pdv(self, context_id: int, control: int, payload: bytes) -> None:
        """One P-DATA-TF holding one PDV: control 0x03 last command fragment, 0x01 a
        command fragment, 0x02 last data set fragment, 0x00 a data set fragment (PS3.8 E.2)."""
        item = struct.pack(">LBB", len(payload) + 2, context_id, control) + payload
        self.send(self.pdata_header(len(item)) + item)

    def send_data_set(self, context_id: int, data: bytes, *, last: bool = True) -> None:
        """``data`` in fragments that fit the peer's maximum length."""
        room = (self.peer_max_pdu or 16384) - 6
        chunks = [data[i:i + room] for i in range(0, len(data), room)] or [b""]
        for n, chunk in enumerate(chunks):
            self.send_pdv(context_id, 0x02 if last and n == len(chunks) - 1 else 0x00, chunk)

    def c_store_command(self, sop_class: str, sop_instance: str, *, data_set_type: int = DATA_SET_PRESENT) -> bytes:
        self._message_id += 1
        cmd = Dataset()
        cmd.AffectedSOPClassUID = sop_class
        cmd.CommandField = C_STORE_RQ
        cmd.MessageID = self._message_id
        cmd.Priority = 0
        cmd.CommandDataSetType = data_set_type
        cmd.AffectedSOPInstanceUID = sop_instance
        return _with_group_length(cmd)

    def c_echo_command(self) -> bytes:
        self._message_id += 1
        cmd = Dataset()
        cmd.AffectedSOPClassUID = Verification
        cmd.CommandField = C_ECHO_RQ
        cmd.MessageID = self._message_id
        cmd.CommandDataSetType = NO_DATA_SET
        return _with_group_length(cmd)

    def read_response(self) -> Response | None:
        """The next DIMSE response's command set, or None when the association ended
        (A-ABORT, A-RELEASE-RP, closed) instead."""
        command = bytearray()
        while True:
            pdu_type, data = self.read_pdu()
            if pdu_type != P_DATA_TF_TYPE:
                return None
            pdu = P_DATA_TF()
            pdu.decode(data)
            for item in pdu.presentation_data_value_items:
                value = item.presentation_data_value
                if value[0] & 1:
                    command += value[1:]
                    if value[0] & 2:
                        ds = decode(BytesIO(bytes(command)), True, True)
                        return Response(int(ds.Status), ds.get("ErrorComment"), ds)

    def echo(self, context_id: int = 3) -> Response | None:
        self.send_pdv(context_id, 0x03, self.c_echo_command())
        return self.read_response()

    def release(self) -> int:
        self.send(A_RELEASE_RQ().encode())
        pdu_type, _ = self.read_pdu()
        self.sock.close()
        return pdu_type

    def abort(self) -> None:
        pdu = A_ABORT_RQ()
        pdu.source = 0x00
        pdu.reason_diagnostic = 0x00
        self.send(pdu.encode())
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawAssociation":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


def _with_group_length(cmd: Dataset) -> bytes:
    """The command set in Implicit VR Little Endian (PS3.7 6.3.1) headed by its
    Command Group Length (0000,0000)."""
    body = encode(cmd, True, True)
    head = Dataset()
    head.CommandGroupLength = len(body)
    return encode(head, True, True) + body
