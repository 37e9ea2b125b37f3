"""E-mail address parsing and validation, done before any connection is opened.

Syntax is checked by ``email-validator`` (RFC 5321/5322/6531, internationalised domains turned into their
ASCII form); display names are parsed by the standard library's header registry. Line breaks are refused
outright: they are how header injection starts. Non-ASCII before the ``@`` (``José@contoso.com``) needs SMTPUTF8
and UTF-8 headers (RFC 6531/6532): it is accepted where the caller says so (``smtputf8=True``: the message
builder, which then writes UTF-8 headers; the session checks at MAIL FROM that the server offers SMTPUTF8) and
refused elsewhere (the connection's login, a mail merge's rows).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.headerregistry import HeaderRegistry
from typing import Any, cast

LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
"""Every character ``str.splitlines()`` breaks a line on: the email package does too, so any of them in a header
could start a new header line."""
_FORBIDDEN = LINE_BREAKS | {"\0"}
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_BARE_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


class CachedHeaderRegistry(HeaderRegistry):
    """The standard header registry, without building a new header class for every header it parses."""

    @functools.lru_cache(maxsize=128)  # noqa: B019 - one registry per process, header names are few
    def __getitem__(self, name: str) -> Any:
        return super().__getitem__(name)


HEADER_REGISTRY = CachedHeaderRegistry()


class AddressError(ValueError):
    """An address could not be parsed or is not valid; the message says why (and quotes the address)."""


class TooManyAddresses(AddressError):
    """More addresses than the caller's limit; raised as soon as the limit is passed, before parsing the rest."""


@dataclass(frozen=True)
class Mailbox:
    """One validated address: ``addr_spec`` is what goes in the envelope, ``header`` what goes in a header."""

    addr_spec: str
    display_name: str = ""

    @property
    def smtputf8(self) -> bool:
        """True when the part before the ``@`` is not ASCII: a header naming it must be UTF-8 (RFC 6532)."""
        return not self.addr_spec.rpartition("@")[0].isascii()

    @property
    def header(self) -> str:
        from email.headerregistry import Address

        if not self.display_name:
            return self.addr_spec
        username, _, domain = self.addr_spec.rpartition("@")
        return str(Address(display_name=self.display_name, username=username, domain=domain))


def parse_mailbox(value: str, *, smtputf8: bool = False) -> Mailbox:
    """
    Parse and validate one address, optionally with a display name (``Reports <r@contoso.com>``).

    :param value: the address as a user wrote it.
    :param smtputf8: accept non-ASCII before the ``@`` (the caller writes UTF-8 headers, RFC 6532).
    :raises AddressError: with a one-line reason.
    """
    mailboxes = parse_addresses(value, smtputf8=smtputf8)
    if len(mailboxes) != 1:
        raise AddressError(f"{value!r} holds {len(mailboxes)} addresses where one was expected")
    return mailboxes[0]


def parse_addresses(
    value: str | Mailbox | Iterable[str | Mailbox] | None, *, limit: int | None = None, smtputf8: bool = False
) -> list[Mailbox]:
    """
    Parse a comma/semicolon separated string or an iterable of strings into validated mailboxes.

    Duplicates (same address, any case) are dropped, keeping the first. The work is linear in the input: each
    address is parsed on its own, never a whole list as one header.

    :param value: ``"a@x.com, b@x.com"``, ``["a@x.com", "Bee <b@x.com>"]`` or ``None``.
    :param limit: raise :class:`TooManyAddresses` as soon as there are more distinct addresses than this.
    :param smtputf8: accept non-ASCII before the ``@`` (the caller writes UTF-8 headers, RFC 6532).
    :raises AddressError: for the first invalid entry.
    """
    if value is None:
        return []
    if isinstance(value, (str, Mailbox)):
        items: list[Any] = [value]
    elif isinstance(value, Iterable):
        items = list(value)
    else:  # to=42 from a template or an XCom: say so rather than "'int' object is not iterable"
        raise AddressError(f"{value!r} is a {type(value).__name__}, not an address string or a list of them")
    if limit is not None:
        _refuse_over_limit(items, limit)
    result: list[Mailbox] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Mailbox):  # validated already (a mail merge checks every row up front)
            _add(result, seen, (item,), limit)
        elif isinstance(item, str):
            # One piece at a time: a string of 100,000 addresses stops at the limit, not after parsing them all.
            for piece in iter_address_list(item):
                _add(result, seen, _parse_one_string(piece, smtputf8), limit)
        else:
            raise AddressError(f"{item!r} is a {type(item).__name__}, not an address string")
    return result


# Matched against the stripped piece: a leading \s* beside the display name's class (which takes spaces too) made
# a piece with a long run of spaces cost quadratic time.
_ANGLE_ADDRESS = re.compile(r'(?:"[^"\\]*"\s*|[^"<>()\\]*)<([^<>"()\\\s]+)>')


def _refuse_over_limit(items: list[Any], limit: int) -> None:
    """
    Count the addresses by their text, before parsing any, and raise :class:`TooManyAddresses` past ``limit``.

    Parsing an address with a display name costs the header parser about 0.2 ms: 100,000 of them in one string
    took seconds before the limit was seen. Here each piece is keyed by the address between ``<...>`` (or its
    whole text), lower-cased, so ``Ann <a@x>`` and ``a@x`` count once; what only parsing can tell equal
    (an IDN domain written both ways, comments) may count twice. Only inputs with more pieces than ``limit``
    are looked at.
    """
    pieces = sum(item.count(",") + item.count(";") + 1 if isinstance(item, str) else 1 for item in items)
    if pieces <= limit:
        return
    keys: set[str] = set()
    for item in items:
        for piece in iter_address_list(item) if isinstance(item, str) else (item,):
            if isinstance(piece, Mailbox):
                key = piece.addr_spec.lower()
            else:
                if not isinstance(piece, str) or not piece.strip():
                    continue
                piece = piece.strip()
                match = _ANGLE_ADDRESS.fullmatch(piece)
                key = (match[1] if match else piece).lower()
            keys.add(key)
            if len(keys) > limit:
                raise TooManyAddresses(f"more than {limit} addresses")


def _add(result: list[Mailbox], seen: set[str], mailboxes: tuple[Mailbox, ...], limit: int | None) -> None:
    for mailbox in mailboxes:
        key = mailbox.addr_spec.lower()
        if key not in seen:
            seen.add(key)
            result.append(mailbox)
            if limit is not None and len(result) > limit:
                raise TooManyAddresses(f"more than {limit} addresses")


def split_address_list(text: str) -> list[str]:
    """
    Split an address list at the commas and semicolons that separate addresses, in one pass.

    Separators inside a quoted display name, a comment or angle brackets are kept. Each piece is then parsed on
    its own: the standard library's parser takes time quadratic in the length of what it is given.
    """
    return list(iter_address_list(text))


def iter_address_list(text: str) -> Iterator[str]:
    """Yield the pieces :func:`split_address_list` returns, one by one (a caller can stop at its limit)."""
    if "," not in text and ";" not in text:
        yield text
        return
    if not _NESTING.search(text):
        # No quotes, comments, brackets or escapes: every separator separates (most long lists look like this).
        start = 0
        for match in _SEPARATOR.finditer(text):
            yield text[start : match.start()]
            start = match.end()
        yield text[start:]
        return
    start = depth = 0
    quoted = escaped = False
    for index, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch in "(<":
            depth += 1
        elif ch in ")>":
            depth = max(depth - 1, 0)
        elif ch in ",;" and depth == 0:
            yield text[start:index]
            start = index + 1
    yield text[start:]


_NESTING = re.compile(r'["\\()<>]')
_SEPARATOR = re.compile(r"[,;]")


@functools.lru_cache(maxsize=1024)  # the same sender and lists come back message after message
def _parse_one_string(text: str, smtputf8: bool = False) -> tuple[Mailbox, ...]:
    from email.errors import HeaderParseError, NonASCIILocalPartDefect
    from email.headerregistry import AddressHeader

    if not _FORBIDDEN.isdisjoint(text):
        raise AddressError(f"{text!r} contains a line break or NUL; addresses must be a single line")
    # Outlook users paste "a@x.com; b@x.com"; RFC 5322 separates with commas. split_address_list() has
    # split at both already; a stray one left here is a parse error.
    normalised = text.strip()
    if not normalised:
        return ()
    if _BARE_ADDRESS.fullmatch(normalised):
        # A bare dot-atom address (most rows of a mail merge): the header parser would return it unchanged with
        # no display name, at twice the cost of the validation itself.
        return (_bare_validated(normalised) or _validated("", normalised, text, smtputf8),)
    try:
        header = cast(AddressHeader, HEADER_REGISTRY("to", normalised))
    except (HeaderParseError, IndexError, ValueError) as exc:
        raise AddressError(f"{text!r} cannot be parsed as an address list") from exc
    mailboxes: list[Mailbox] = []
    for group in header.groups:
        for address in group.addresses:
            mailboxes.append(_validated(address.display_name, address.addr_spec, text, smtputf8))
    defects = getattr(header, "defects", ())
    if smtputf8:  # non-ASCII before the '@' is allowed here (RFC 6532): the parser still notes it
        defects = [defect for defect in defects if not isinstance(defect, NonASCIILocalPartDefect)]
    if defects or not mailboxes:
        raise AddressError(f"{text!r} is not a valid address list")
    return tuple(mailboxes)


# Format characters a display name may hold: the joiners shape Persian and Indic words and emoji sequences
# (a ZWJ joins "woman" and "laptop" into one picture), and neither reorders nor hides text around it.
_JOINERS = frozenset("\u200c\u200d")


def _check_display_name(display_name: str, original: str) -> None:
    """
    Refuse invisible and bidirectional format characters (Unicode category Cf) in a display name.

    U+202E (right-to-left override) shows ``Finance <evil@x>`` as something else; U+200B, U+2060 or U+FEFF hide
    inside a name that then looks like a known one. The envelope check refuses them in addresses already
    (:func:`~airflow_provider_hve.transport.check_envelope_address`); a display name is what the reader sees.
    """
    import unicodedata

    hidden = next((ch for ch in display_name if ch not in _JOINERS and unicodedata.category(ch) == "Cf"), None)
    if hidden is not None:
        raise AddressError(
            f"the display name of {original.strip()!r} contains the invisible format character U+{ord(hidden):04X} "
            f"({unicodedata.name(hidden, 'a format character')}), which can make a name or address display as "
            f"another one; remove it (it often comes with text copied from a web page or a document)"
        )


def _bare_validated(addr_spec: str) -> Mailbox | None:
    """
    What :func:`_validated` returns for a bare ASCII dot-atom address, at the cost of its local part only; ``None``
    where that is not certain (then the caller validates the whole address).

    email-validator spends most of its time on the domain (IDNA, UTS #46), which a mail merge repeats row after row
    for a handful of domains: the domain's verdict is taken from email-validator once per domain
    (:func:`_domain_verdict`). A dot-atom local part is valid as written, so the address is then known valid, and
    written as email-validator writes it, unless a rule that looks at the whole address may apply: a local part
    over 64 characters, an address over 254, a local part email-validator lower-cases (``Postmaster``: RFC 2142)
    or an A-label (``xn--``) domain, whose Unicode form is measured too. Those, and a refused domain (for its exact
    message), go the whole way.
    """
    local, _, domain = addr_spec.rpartition("@")
    if len(local) > 64 or len(addr_spec) > 254 or "xn--" in domain.lower() or _lower_cased(local):
        return None
    ascii_domain = _domain_verdict(domain)
    if ascii_domain is None or len(local) + 1 + len(ascii_domain) > 254:
        return None
    return Mailbox(addr_spec=f"{local}@{ascii_domain}")


@functools.lru_cache(maxsize=1024)
def _domain_verdict(domain: str) -> str | None:
    """The ASCII domain email-validator returns for an address at ``domain``; ``None`` if it refuses the domain."""
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(f"a@{domain}", check_deliverability=False, allow_smtputf8=False).ascii_domain
    except EmailNotValidError:
        return None


def _lower_cased(local: str) -> bool:
    """Whether email-validator lower-cases this local part (RFC 2142 role names); True if that cannot be told."""
    try:
        from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
    except ImportError:  # another layout of email-validator: validate the whole address
        return True
    return local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES


def _validated(display_name: str, addr_spec: str, original: str, smtputf8: bool = False) -> Mailbox:
    from email_validator import EmailNotValidError, validate_email

    if display_name:
        _check_display_name(display_name, original)
    if "@" not in addr_spec:
        raise AddressError(f"{original!r} has no '@domain'")
    local_part = addr_spec.rpartition("@")[0]
    if not smtputf8 and not local_part.isascii():
        wide = "".join(dict.fromkeys(ch for ch in local_part if not ch.isascii()))
        raise AddressError(
            f"{addr_spec!r} has non-ASCII characters before the '@' ({wide!r}), which need SMTPUTF8 (RFC 6531/6532); "
            f"here the part before the '@' must be ASCII (internationalised domains and display names are fine)"
        )
    try:
        # Syntax only: deliverability (DNS) is the server's business, and workers may have no DNS. With SMTPUTF8,
        # email-validator still refuses invisible and bidi characters in the address (its "unsafe characters").
        checked = validate_email(addr_spec, check_deliverability=False, allow_smtputf8=smtputf8)
    except EmailNotValidError as exc:
        # email-validator's reasons end with a period; callers add their own.
        raise AddressError(f"{addr_spec!r}: {str(exc).rstrip('.')}") from None
    if checked.ascii_email:
        return Mailbox(addr_spec=checked.ascii_email, display_name=display_name)
    # An internationalised local part: its domain still goes as A-labels, as the ASCII addresses' do (accepted
    # domains, the tenant's list and DNS know that form).
    return Mailbox(addr_spec=f"{checked.local_part}@{checked.ascii_domain}", display_name=display_name)


def outside_domains(addresses: Iterable[str], accepted: Iterable[str]) -> list[str]:
    """
    Return the addresses whose domain is not one of ``accepted`` (exact match, case-insensitive, ASCII forms).

    Domains are compared in their A-label form (IDNA 2008, UTS #46), as email-validator writes them:
    ``bücher.example`` and ``xn--bcher-kva.example`` are one domain, whichever side names it which way.

    :param addresses: addresses (``Mailbox.addr_spec``: domains in their ASCII form already).
    :param accepted: the tenant's accepted domains, lower-case A-labels (``HveConnectionConfig.accepted_domains``).
    """
    domains = frozenset(accepted)
    outside = []
    for address in addresses:
        domain = address.rpartition("@")[2].lower()
        # An envelope built elsewhere may name a U-label domain: mapped, never refused for its spelling alone.
        if domain not in domains and (domain.isascii() or domain_a_label(domain) not in domains):
            outside.append(address)
    return outside


def domain_a_label(domain: str) -> str:
    """
    Return ``domain`` in its lower-case ASCII form (A-labels), as email-validator writes an address's domain.

    IDNA 2008 with the UTS #46 mapping, non-transitional (``faß.example`` is ``xn--fa-hia.example``; the standard
    library's IDNA 2003 codec made it ``fass.example``, another domain). ``""`` when it is not a domain name.
    """
    if domain.isascii() and "xn--" not in domain.lower():
        return domain.lower()  # nothing to map, and no need to import the IDNA tables
    import idna

    try:
        return idna.encode(domain, uts46=True, std3_rules=False, transitional=False).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError, ValueError):
        return ""


def accepted_domains_message(argument: str, outside: list[str], accepted: Iterable[str], conn_id: str) -> str:
    """The refusal of recipients outside the connection's ``accepted_domains``, with HVE's rule."""
    shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
    return (
        f"Argument {argument!r}: {shown} {'is' if len(outside) == 1 else 'are'} outside the accepted domains of "
        f"connection {conn_id!r} ({', '.join(accepted)}). HVE delivers only to the tenant's accepted domains "
        f"(internal recipients) and refuses the rest (550 5.7.54). Nothing was sent: remove them, or add the domain "
        f"to the connection's extra 'accepted_domains' if the tenant accepts it."
    )
