"""The bare-address fast path of the address parser gives what email-validator gives, or steps aside.

``_bare_validated`` takes a domain's verdict from email-validator once per domain; for every bare dot-atom
address it answers, the answer must be the one the whole validation (``_validated``) gives.
"""

from __future__ import annotations

import itertools
import random
import string

import pytest

from airflow_provider_hve import addresses

LOCALS = [
    "a",
    "a.b",
    "user.name+tag",
    "o'brien",
    "x" * 63,
    "x" * 64,
    "x" * 65,
    "postmaster",
    "Postmaster",
    "INFO",
    "Abuse",
]
DOMAINS = [
    "contoso.example",
    "Contoso.COM",
    "x.local",
    "a.test",
    "a.invalid",
    "a.onion",
    "a.arpa",
    "localhost.localdomain",
    "b.123",
    "123.com",
    "-a.com",
    "a-.com",
    "a--b.com",
    "ab--cd.com",
    "xn--fa-hia.example",
    "XN--fa-hia.com",
    "xn--zz.com",
    "a." + "b" * 63 + ".com",
    "a." + "b" * 64 + ".com",
    ("c" * 60 + ".") * 4 + "com",
    "a.b",
    "1.2.3.4",
]


def _addresses() -> list[str]:
    rng = random.Random(18)
    atext = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
    locals_ = LOCALS + [
        ".".join("".join(rng.choice(atext) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 4)))
        for _ in range(60)
    ]
    domains = DOMAINS + [
        ".".join(
            "".join(rng.choice(string.ascii_letters + string.digits + "-") for _ in range(rng.randint(1, 12)))
            for _ in range(rng.randint(2, 4))
        )
        for _ in range(60)
    ]
    return [f"{local}@{domain}" for local, domain in itertools.product(locals_, domains)]


def _whole(address: str) -> object:
    try:
        return addresses._validated("", address, address)
    except addresses.AddressError as exc:
        return ("refused", str(exc))


def test_the_fast_path_agrees_with_the_whole_validation() -> None:
    answered = 0
    for address in _addresses():
        if not addresses._BARE_ADDRESS.fullmatch(address):
            continue
        fast = addresses._bare_validated(address)
        if fast is not None:
            answered += 1
            assert fast == _whole(address), address
    assert answered > 1000  # the fast path is taken for most valid addresses


@pytest.mark.parametrize(
    "address", ["Postmaster@contoso.example", f"{'x' * 65}@contoso.example", "a@xn--fa-hia.example", "a@a.invalid"]
)
def test_the_fast_path_steps_aside_where_the_whole_address_matters(address: str) -> None:
    assert addresses._bare_validated(address) is None
