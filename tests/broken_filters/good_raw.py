"""Control: a correct raw filter (proceeds, echoes data lines). Must pass."""
from rawfilter import Raw

Raw().run()
