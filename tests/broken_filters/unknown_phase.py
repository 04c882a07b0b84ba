"""Registers a filter phase that does not exist (data-lines)."""
from rawfilter import PHASES, Raw

Raw(phases=PHASES + ("data-lines",)).run()
