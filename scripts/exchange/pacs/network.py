"""Associations with a PACS node: the exchange's own AE title, TLS as the site data says,
the node's timeouts, and every refusal named: the rejection's reason, the socket's error, or a
DIMSE status with its meaning (pynetdicom's tables of PS3.4's statuses)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from pynetdicom import AE, status
from pynetdicom.association import Association

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
SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)


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
    ae.connection_timeout = node.timeout
    ae.acse_timeout = node.timeout
    ae.dimse_timeout = node.timeout
    ae.network_timeout = node.timeout
    return ae


@contextlib.contextmanager
def association(name: str, node: PacsNode, ae: AE, **options) -> Iterator[Association]:
    """An association from `ae` (own_ae, with its requested contexts) to the node, released
    afterwards; PacsError if there is none, saying why."""
    handler = _ErrorsSaid()
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(handler)
    try:
        tls_args = (tls.client_context(node.ca_file), node.host) if node.tls else None
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls_args, **options)
    finally:
        logger.removeHandler(handler)
    if not assoc.is_established:
        raise PacsError(_why_not(name, node, ae, assoc, handler.said))
    try:
        yield assoc
    except BaseException:  # Ctrl-C, SIGTERM or a refusal mid-way: the PACS stops at once
        if assoc.is_established:
            assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()


def _why_not(name: str, node: PacsNode, ae: AE, assoc: Association, said: list[str]) -> str:
    where = describe(name, node)
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        hint = ""
        if rejection.diagnostic == 3 and rejection.result_source == 1:  # calling AE title not recognised
            hint = f"; the PACS must know the exchange's AE title {ae.ae_title} as a modality"
        elif rejection.diagnostic == 7 and rejection.result_source == 1:  # called AE title not recognised
            hint = f"; is {node.ae_title} the PACS's AE title?"
        return f"{where} refused the association: {rejection.reason_str} ({rejection.result_str}){hint}"
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
    with association(name, node, ae) as assoc:
        code = status_of(assoc.send_c_echo())
    if code != SUCCESS:
        raise PacsError(
            f"{describe(name, node)}: C-ECHO answered "
            + (status_text("echo", code) if code is not None else "nothing (timed out or aborted)")
        )
