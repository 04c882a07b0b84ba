"""Registers '*' and link-connect again: smtpd sends link-connect twice."""
from rawfilter import Raw

Raw(registration=[b"register|report|smtp-in|*", b"register|report|smtp-in|link-connect", b"register|filter|smtp-in|connect"]).run()
