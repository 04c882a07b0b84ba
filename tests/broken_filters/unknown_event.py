"""Registers a report event that does not exist (link-reset)."""
from rawfilter import EVENTS, Raw

Raw(events=EVENTS + ("link-reset",)).run()
