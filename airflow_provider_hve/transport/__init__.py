"""The SMTP transport: reply parsing (replies.py), session set-up with bounded replies (setup.py)."""
