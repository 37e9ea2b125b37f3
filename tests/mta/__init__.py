"""Tests against a real Postfix + Dovecot in front of the sandbox (``make test-mta``)."""
