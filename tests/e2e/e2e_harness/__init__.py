"""e2e harness: a real OpenSMTPD in a private loopback-only namespace.

See README.md in tests/e2e for the fixtures built on it."""

from .mail import Delivered, Maildir, NsSMTP, make_message, token
from .netns import Namespace
from .prereq import PrerequisiteError, missing_basics, required, skip_or_fail
from .runtime import Runtime, build_runtime
from .smtpd import AUTH_PASSWORD, AUTH_USER, DOMAIN, HOSTNAME, ProcExec, SmtpdServer, default_zone

__all__ = [
    "AUTH_PASSWORD",
    "AUTH_USER",
    "DOMAIN",
    "Delivered",
    "HOSTNAME",
    "Maildir",
    "Namespace",
    "NsSMTP",
    "PrerequisiteError",
    "ProcExec",
    "Runtime",
    "SmtpdServer",
    "build_runtime",
    "default_zone",
    "make_message",
    "missing_basics",
    "required",
    "skip_or_fail",
    "token",
]
