"""Ends every line with CR LF."""
from rawfilter import Raw

Raw(eol=b"\r\n").run()
