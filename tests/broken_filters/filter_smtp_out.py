"""Registers a filter (not a report) for smtp-out."""
from rawfilter import Raw

Raw(registration=[b"register|filter|smtp-out|connect"]).run()
