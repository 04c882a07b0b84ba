"""Registers smtp-out reports whether or not smtpd announced the subsystem."""
from rawfilter import Raw

Raw(registration=[b"register|report|smtp-out|link-connect", b"register|filter|smtp-in|connect"]).run()
