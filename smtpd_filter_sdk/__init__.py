"""smtpd_filter_sdk: write OpenSMTPD proc-exec filters in Python.

    from smtpd_filter_sdk import Filter, reject

    f = Filter("helo-policy")

    @f.on("helo", "ehlo")
    def helo(session, identity):
        if identity == "localhost":
            return reject(550, "5.7.1 bad HELO")

    f.run()
"""

from .filter import Filter, MessageWatcher, in_thread
from .message import Header, Headers, Message, fold, stuff, unstuff
from .protocol import Address, Config, Report, Request
from .responses import (
    Decision,
    DecisionError,
    Disconnect,
    Junk,
    Proceed,
    Reject,
    Rewrite,
    disconnect,
    junk,
    proceed,
    reject,
    report,
    rewrite,
)
from .session import Session, Transaction

__all__ = [
    "Address",
    "Config",
    "Decision",
    "DecisionError",
    "Disconnect",
    "Filter",
    "Header",
    "Headers",
    "Junk",
    "Message",
    "MessageWatcher",
    "Proceed",
    "Reject",
    "Report",
    "Request",
    "Rewrite",
    "Session",
    "Transaction",
    "disconnect",
    "fold",
    "in_thread",
    "junk",
    "proceed",
    "reject",
    "report",
    "rewrite",
    "stuff",
    "unstuff",
]
