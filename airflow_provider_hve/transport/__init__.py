"""
The SMTP transport after AUTH: messages in, deliveries out, over one pipelined connection.

The layers, each a module, importing downwards only::

    outcome.py       SendAccount: each attempt's outcome in -> send again to these, return this result, raise this
      |
    session.py       Pipeline (DATA), BdatPipeline (sliding BDAT window): what smtp.py and the mail merge use
      |   \\
    loop.py  window.py   the only I/O (selectors, deadline per reply) | the window's size from RTT x rate
      |
    queue.py         the reply queue: every command written enqueues the reply it expects; bytes in, events out
      |   \\
    transactions.py  replies.py   a DATA or BDAT transaction: its bytes and its verdicts | bytes -> bounded replies
      |
    envelope.py      addresses, 8BITMIME, SIZE, CRLF, 50-recipient batches: checked before a byte is written

    setup.py         before AUTH: smtplib (greeting, EHLO, STARTTLS, AUTH) reading through replies.py, bounded too

``queue.py`` and everything under it do no I/O (sans-I/O, as h11 does for HTTP): they are tested by feeding
bytes (``tests/unit/test_transport_queue.py``). Nor does ``outcome.py``: ``smtp.py`` attempts and backs off,
and feeds it each attempt's outcome (``tests/unit/test_send_outcome.py``). The transport does not import the
connection's configuration: ``smtp.py`` passes ``bdat_window`` and ``timeout`` in.
"""

from __future__ import annotations

from airflow_provider_hve.transport.envelope import (
    MAX_RECIPIENTS_PER_TRANSACTION,
    Capabilities,
    Delivery,
    check_envelope_address,
    refuse_utf8_header,
    refuses_the_message,
    seven_bit,
    utf8_header,
)
from airflow_provider_hve.transport.loop import IDLE_PROBE_SECONDS, close_quietly, quit_quietly
from airflow_provider_hve.transport.outcome import SendAccount, SendAgain, SendResult
from airflow_provider_hve.transport.session import BdatPipeline, Pipeline
from airflow_provider_hve.transport.transactions import STOPPED_BEFORE_THIS_BATCH
from airflow_provider_hve.transport.window import DEFAULT_SIZE as DEFAULT_WINDOW
from airflow_provider_hve.transport.window import MAX_SIZE as MAX_WINDOW

__all__ = [
    "DEFAULT_WINDOW",
    "IDLE_PROBE_SECONDS",
    "MAX_RECIPIENTS_PER_TRANSACTION",
    "MAX_WINDOW",
    "STOPPED_BEFORE_THIS_BATCH",
    "BdatPipeline",
    "Capabilities",
    "Delivery",
    "Pipeline",
    "SendAccount",
    "SendAgain",
    "SendResult",
    "check_envelope_address",
    "close_quietly",
    "quit_quietly",
    "refuse_utf8_header",
    "refuses_the_message",
    "seven_bit",
    "utf8_header",
]
