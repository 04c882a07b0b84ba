"""Import the production filters (``filters/``, installed as ``smtpd_filters``)
from a checkout that has not been pip-installed, and run them as smtpd does.

``import filterkit`` first, then ``from smtpd_filters import senderscore``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

if importlib.util.find_spec("smtpd_filters") is None:  # not installed: map filters/ to it
    spec = importlib.util.spec_from_file_location(
        "smtpd_filters", REPO / "filters" / "__init__.py", submodule_search_locations=[str(REPO / "filters")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["smtpd_filters"] = module
    spec.loader.exec_module(module)


def command(module: str, *args: str) -> str:
    """A proc-exec command line running ``filters/<module>.py`` with this
    interpreter (the SDK found through PYTHONPATH, see ``env()``)."""
    import shlex

    return " ".join(shlex.quote(x) for x in (sys.executable, str(REPO / "filters" / f"{module}.py"), *args))


def env() -> dict[str, str]:
    """smtpd's environment for a filter (PATH, LANG) plus PYTHONPATH."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONPATH": str(REPO)}
