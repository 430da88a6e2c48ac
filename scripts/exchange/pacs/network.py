"""Associations with a PACS node: the exchange's own AE title, TLS as the site data says,
the node's timeouts, and every refusal named: the rejection's reason, the socket's error, or a
DIMSE status with its meaning (pynetdicom's tables of PS3.4's statuses)."""

from __future__ import annotations

import contextlib
import logging
import select
import ssl
from collections.abc import Iterator

from pynetdicom import AE, evt, status, transport
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ

from exchange import tls
from exchange.errors import ExchangeError
from exchange.site import Dicom, PacsNode

STATUS_TABLES = {
    "echo": status.VERIFICATION_SERVICE_CLASS_STATUS,
    "find": status.QR_FIND_SERVICE_CLASS_STATUS,
    "move": status.QR_MOVE_SERVICE_CLASS_STATUS,
    "get": status.QR_GET_SERVICE_CLASS_STATUS,
    "store": status.STORAGE_SERVICE_CLASS_STATUS,
}
MAX_PDU = 1 << 20
SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)


def _ready(self: transport.AssociationSocket) -> bool:
    """AssociationSocket.ready by poll(), not select(): select() cannot watch a descriptor
    beyond 1,023 (pynetdicom 3.0.4 then takes the socket as closed, "Association Aborted"), and
    an import holds every inspected file open, so a CT of 2,000 slices puts its socket there."""
    if self.socket is None or self._is_connected is False:
        return False
    poller = select.poll()
    try:
        poller.register(self.socket, select.POLLIN)
        ready = bool(poller.poll(0))
    except (OSError, ValueError):
        self.event_queue.put("Evt17")  # the transport connection closed, as pynetdicom's own says
        return False
    if isinstance(self.socket, ssl.SSLSocket):
        return ready or bool(self.socket.pending())  # TLS may hold data poll() cannot see
    return ready


transport.AssociationSocket.ready = property(_ready)  # type: ignore[method-assign]


class PacsError(ExchangeError):
    """The PACS could not be reached, refused, or answered with a failure; the message names
    the node, what was asked and the DICOM status."""


def describe(name: str, node: PacsNode) -> str:
    return f"PACS {name} ({node.ae_title} at {node.host}:{node.port}{', TLS' if node.tls else ''})"


def status_text(service: str, code: int) -> str:
    """E.g. 0xA801 (Failure: Move destination unknown)."""
    category, meaning = STATUS_TABLES[service].get(code, (status.code_to_category(code), ""))
    return f"0x{code:04X} ({category}{': ' + meaning if meaning else ''})"


def status_of(reply) -> int | None:
    """The Status of a DIMSE reply; None when none came (timeout, abort)."""
    return int(reply.Status) if reply is not None and "Status" in reply else None


class _ErrorsSaid(logging.Handler):
    """What pynetdicom says went wrong while an association is set up (it logs, it does not raise)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())


def own_ae(dicom: Dicom, node: PacsNode) -> AE:
    ae = AE(ae_title=dicom.ae_title)
    # What the exchange takes in one PDU: pynetdicom's default (16 KB) parses a CT image in 32
    # pieces in Python; 1 MB takes it in one, at a third of the CPU.
    ae.maximum_pdu_size = MAX_PDU
    ae.connection_timeout = node.timeout
    ae.acse_timeout = node.timeout
    ae.dimse_timeout = node.timeout
    ae.network_timeout = node.timeout
    return ae


@contextlib.contextmanager
def association(name: str, node: PacsNode, dicom: Dicom, ae: AE, **options) -> Iterator[Association]:
    """An association from `ae` (own_ae, with its requested contexts) to the node, released
    afterwards; PacsError if there is none, saying why."""
    said = _ErrorsSaid()
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(said)
    # The rejection as it arrived: pynetdicom 3.0.4 reports about one in a hundred immediate
    # rejections as an abort without their reason (its reader thread closed the socket first).
    rejections: list[A_ASSOCIATE_RJ] = []
    handlers = [*options.pop("evt_handlers", []), (evt.EVT_PDU_RECV, lambda event: _keep_rejection(event, rejections))]
    try:
        tls_args = (client_tls(node, dicom), node.host) if node.tls else None
        assoc = ae.associate(
            node.host, node.port, ae_title=node.ae_title, tls_args=tls_args, evt_handlers=handlers, **options
        )
    finally:
        logger.removeHandler(said)
    if not assoc.is_established:
        raise PacsError(_why_not(name, node, ae, rejections, said.said))
    try:
        yield assoc
    except BaseException:  # Ctrl-C, SIGTERM or a refusal mid-way: the PACS stops at once
        if assoc.is_established:
            assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()


def client_tls(node: PacsNode, dicom: Dicom) -> ssl.SSLContext:
    """The PACS's certificate verified and its name checked; the exchange's own shown to it."""
    context = tls.client_context(node.ca_file)
    _own_certificate(context, dicom)
    return context


def server_tls(node: PacsNode, dicom: Dicom) -> ssl.SSLContext:
    """For the C-MOVE destination: the exchange's certificate, and the PACS's required and
    verified (only the PACS asked may deliver)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    if node.ca_file:
        context.load_verify_locations(cafile=node.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    _own_certificate(context, dicom)
    return context


def _own_certificate(context: ssl.SSLContext, dicom: Dicom) -> None:
    try:
        context.load_cert_chain(dicom.certificate, dicom.certificate_key)
    except (OSError, ssl.SSLError) as error:
        raise PacsError(
            f"DICOM over TLS: cannot use the exchange's certificate {dicom.certificate} "
            f"(key {dicom.certificate_key}): {getattr(error, 'strerror', None) or error}"
        ) from None


def _keep_rejection(event, rejections: list[A_ASSOCIATE_RJ]) -> None:
    if isinstance(event.pdu, A_ASSOCIATE_RJ):
        rejections.append(event.pdu)


def _why_not(name: str, node: PacsNode, ae: AE, rejections: list[A_ASSOCIATE_RJ], said: list[str]) -> str:
    where = describe(name, node)
    if rejections:
        rejection = rejections[0]
        hint = ""
        if (rejection.source, rejection.reason_diagnostic) == (1, 3):  # service user: calling AE title
            hint = f"; the PACS must know the exchange's AE title {ae.ae_title} as a modality"
        elif (rejection.source, rejection.reason_diagnostic) == (1, 7):  # service user: called AE title
            hint = f"; is {node.ae_title} the PACS's AE title?"
        when = " for now (a transient rejection: try again later)" if rejection.result == 2 else ""
        return f"{where} refused the association{when}: {rejection.reason_str}{hint}"
    detail = next((line for line in reversed(said) if "Error" in line or "error" in line), None)
    detail = detail or (said[-1] if said else "no answer")
    return f"{where}: no DICOM association: {detail}"


def refused_contexts(assoc: Association, wanted: list[str]) -> list[str]:
    """The abstract syntaxes of `wanted` the PACS accepted no presentation context for."""
    accepted = {context.abstract_syntax for context in assoc.accepted_contexts}
    return [uid for uid in wanted if uid not in accepted]


def echo(name: str, node: PacsNode, dicom: Dicom) -> None:
    """C-ECHO; PacsError unless the node answers Success."""
    from pynetdicom.sop_class import Verification

    ae = own_ae(dicom, node)
    ae.add_requested_context(Verification)
    with association(name, node, dicom, ae) as assoc:
        code = status_of(assoc.send_c_echo())
    if code != SUCCESS:
        raise PacsError(
            f"{describe(name, node)}: C-ECHO answered "
            + (status_text("echo", code) if code is not None else "nothing (timed out or aborted)")
        )
