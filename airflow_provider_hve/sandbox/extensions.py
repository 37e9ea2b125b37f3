"""Exchange Online's ESMTP extensions in the sandbox: its EHLO keywords, CHUNKING (BDAT), SMTPUTF8, DSN.

Exchange Online's submission frontends answer EHLO after STARTTLS with ``SIZE 157286400``, ``PIPELINING``,
``DSN``, ``ENHANCEDSTATUSCODES``, ``AUTH LOGIN XOAUTH2``, ``8BITMIME``, ``BINARYMIME``, ``CHUNKING`` and
``SMTPUTF8`` (before STARTTLS: ``STARTTLS`` and no AUTH). :func:`ehlo_lines` builds that answer, and
:class:`ChunkingSmtp` gives :class:`~.smtp_server.HveSmtp` the ``BDAT`` command (RFC 3030) and the
MAIL/RCPT parameters those keywords promise (``BODY=BINARYMIME``, ``SMTPUTF8``, DSN's ``RET``, ``ENVID``,
``NOTIFY``, ``ORCPT``).

HVE's own limits do not follow the advertised ``SIZE``: a message over 10 MB is still refused with
``552 5.3.4`` (at ``MAIL FROM`` when ``SIZE=`` declares it, else after the content), as HVE does.
"""

from __future__ import annotations

import re
from typing import Any

from aiosmtpd.smtp import SMTP

# What outlook.office365.com advertises; HVE accounts are still held to 10 MB per message.
EXCHANGE_SIZE = 157_286_400

BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
BDAT_SYNTAX = "501 5.5.4 Syntax: BDAT <size> [LAST]"
BDAT_NOT_OFFERED = "502 5.5.1 BDAT is not offered by this server (no CHUNKING)"
BINARYMIME_NEEDS_BDAT = "503 5.5.1 BODY=BINARYMIME requires BDAT, not DATA"
SMTPUTF8_NOT_OFFERED = "555 5.5.4 SMTPUTF8 is not offered by this server"
NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"
# Exchange refuses basic authentication where it is turned off; the sandbox knows no passwords.
BASIC_AUTH_DISABLED = "535 5.7.139 Authentication unsuccessful, basic authentication is disabled"

_BDAT = re.compile(r"^(\d{1,15})(?: +(LAST))? *$", re.IGNORECASE)
_DSN_PARAMETERS = ("RET", "ENVID", "NOTIFY", "ORCPT")
# How much of a chunk is read at a time: a refused 150 MB chunk is drained without being held.
_READ_SIZE = 64 * 1024


def ehlo_lines(
    first_line: str,
    *,
    size: int,
    pipelining: bool,
    eight_bit_mime: bool,
    chunking: bool,
    smtputf8: bool,
    starttls: bool,
    auth: str | None,
) -> list[str]:
    """Return the EHLO reply lines in Exchange Online's order, the last one with ``250 ``.

    :param first_line: aiosmtpd's greeting line (``250-<hostname>``)
    :param size: the ``SIZE`` to advertise
    :param auth: the AUTH keyword line without ``250-`` (``AUTH LOGIN XOAUTH2``), or ``None``
    """
    keywords = [f"SIZE {size}"]
    if pipelining:
        keywords.append("PIPELINING")
    keywords += ["DSN", "ENHANCEDSTATUSCODES"]
    if starttls:
        keywords.append("STARTTLS")
    if auth:
        keywords.append(auth)
    if eight_bit_mime:
        keywords.append("8BITMIME")
    if chunking:
        # BINARYMIME content can only travel by BDAT (RFC 3030), so it goes with CHUNKING.
        keywords += ["BINARYMIME", "CHUNKING"]
    if smtputf8:
        keywords.append("SMTPUTF8")
    return [first_line, *(f"250-{word}" for word in keywords[:-1]), f"250 {keywords[-1]}"]


def parse_bdat(arg: str | None) -> tuple[int, bool] | None:
    """Return ``(size, last)`` from the argument of ``BDAT``, or ``None`` when it is malformed."""
    match = _BDAT.match(arg or "")
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None


class ChunkingSmtp(SMTP):
    """``BDAT`` (RFC 3030) and Exchange's MAIL/RCPT parameters, for :class:`~.smtp_server.HveSmtp`.

    The chunk after ``BDAT <n>`` is read as exactly ``n`` octets (no dot-stuffing, any bytes) and always
    drained, even when the command is refused, so the next pipelined command is read where it starts. The
    chunks of a transaction are joined at ``BDAT <n> LAST`` and handed to the handler's ``handle_DATA`` like
    a DATA message (the same checks, faults and records). A transaction over the size limit is refused
    with ``552 5.3.4`` after its last chunk; the chunks before it get ``250`` and are dropped unread.
    """

    # Set by HveSmtp: the shared handler (its switches) and this connection's record.
    hve_handler: Any
    record: Any

    # The transaction's chunks so far (None: no BDAT yet) and their total size.
    _bdat_chunks: list[bytes] | None = None
    _bdat_octets = 0

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self._bdat_chunks, self._bdat_octets = None, 0

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        # aiosmtpd answers 555 to parameters it does not know: accept those Exchange's keywords promise.
        result = super()._getparams(params)
        if result is None:
            return None
        for name in _DSN_PARAMETERS:
            result.pop(name, None)
        if result.get("BODY") == "BINARYMIME" and self.hve_handler.chunking:
            del result["BODY"]
        return result

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is not None and (
            self._bdat_chunks is not None or (envelope.mail_from and "BODY=BINARYMIME" in envelope.mail_options)
        ):
            # DATA in the middle of BDAT chunks, or for binary content (RFC 3030 §3).
            await self.push(BINARYMIME_NEEDS_BDAT if self._bdat_chunks is None else BAD_SEQUENCE)
            return
        await super().smtp_DATA(arg)

    async def smtp_BDAT(self, arg: str | None) -> None:
        parsed = parse_bdat(arg)
        if parsed is None:
            # Where the chunk ends is unknown, so what follows cannot be read as commands.
            await self.push(BDAT_SYNTAX)
            if self.transport is not None:
                self.transport.close()
            return
        size, last = parsed
        envelope = self.envelope
        assert envelope is not None
        refusal = (
            BDAT_NOT_OFFERED
            if not self.hve_handler.chunking
            else "503 5.5.2 Need mail command"
            if not envelope.mail_from
            else "503 5.5.2 Need rcpt command"
            if not envelope.rcpt_tos
            else None
        )
        keep = refusal is None and self._bdat_octets + size <= (self.data_size_limit or size)
        chunk = await self._read_octets(size, keep)
        if chunk is None:
            return  # the client hung up in the middle of the chunk
        if self.record is not None and self.record.transactions and envelope.mail_from:
            self.record.transactions[-1].bdat_chunks += 1
        if refusal is not None:
            await self.push(refusal)
            return
        if self._bdat_chunks is None:
            self._bdat_chunks = []
        self._bdat_octets += size
        if keep:
            self._bdat_chunks.append(chunk)
        else:
            self._bdat_chunks.clear()  # over HVE's limit: refused at LAST, nothing more is kept
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        if self.data_size_limit and self._bdat_octets > self.data_size_limit:
            from airflow_provider_hve.sandbox.smtp_server import TOO_BIG

            if self.record is not None and self.record.transactions:
                self.record.transactions[-1].data_reply = TOO_BIG
            self._set_post_data_state()
            await self.push(TOO_BIG)
            return
        content = b"".join(self._bdat_chunks)
        envelope.content = envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_octets(self, size: int, keep: bool) -> bytes | None:
        """Read exactly ``size`` octets of chunk; return them (``b""`` when not kept), or ``None`` at EOF."""
        parts: list[bytes] = []
        remaining = size
        while remaining:
            part = await self._reader.read(min(remaining, _READ_SIZE))
            if not part:
                if self.transport is not None:
                    self.transport.close()
                return None
            remaining -= len(part)
            if keep:
                parts.append(part)
        return b"".join(parts)
