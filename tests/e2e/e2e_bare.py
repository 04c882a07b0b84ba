"""Run the production filters under their *bare* names, as users write them:

    filter "f1" proc-exec "py-filter-senderscore -junkBelow 70"

smtpd prefixes a command that does not start with ``/`` with its libexec
directory (``/usr/libexec/opensmtpd`` on Debian).  The install step for that is
``smtpd-filters-link --libexec DIR`` (filters/link.py), which symlinks the
py-filter-* console scripts there.  Here, without touching the system:

1. the e2e runtime's venv gets the console scripts of ``[project.scripts]``
   (what ``pip install`` writes: ``#!<venv python>`` + ``main()``);
2. a copy of /usr/libexec/opensmtpd (smtpd also runs its delivery and table
   helpers from there) gets the links, made by running ``smtpd-filters-link``
   itself with the runtime's python;
3. inside the test's private mount namespace that copy is bind-mounted over
   /usr/libexec/opensmtpd before smtpd starts.

``bare_smtpd_factory`` is ``smtpd_factory`` (same arguments, same teardown
checks) for such servers.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from e2e_harness import Runtime, SmtpdServer
from e2e_harness.netns import Namespace
from e2e_harness.runtime import REPO

LIBEXEC = Path("/usr/libexec/opensmtpd")

_SCRIPT = """#!{python}
# console script '{name}' as pip writes it ({target})
import sys
from {module} import {func}
if __name__ == "__main__":
    sys.exit({func}())
"""


def console_scripts() -> dict[str, str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(meta.get("scripts", {}))


def install_console_scripts(rt: Runtime) -> Path:
    """Write the project's console scripts into the runtime venv's bin/."""
    bindir = Path(rt.python).parent
    for name, target in console_scripts().items():
        module, _, func = target.partition(":")
        path = bindir / name
        path.write_text(_SCRIPT.format(python=rt.python, name=name, target=target, module=module, func=func))
        path.chmod(0o755)
    return bindir


def libexec_overlay(rt: Runtime) -> Path:
    """Once per session: a copy of smtpd's libexec dir with the py-filter-*
    links added by ``smtpd-filters-link``."""
    overlay = rt.root / "libexec-overlay"
    if (overlay / ".ready").exists():
        return overlay
    bindir = install_console_scripts(rt)
    shutil.rmtree(overlay, ignore_errors=True)
    shutil.copytree(LIBEXEC, overlay, symlinks=True)
    overlay.chmod(0o755)
    r = subprocess.run(
        [str(bindir / "smtpd-filters-link"), "--libexec", str(overlay), "--bindir", str(bindir)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
    )
    if r.returncode != 0:
        raise RuntimeError(f"smtpd-filters-link failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    linked = sorted(p.name for p in overlay.glob("py-filter-*"))
    if not linked:
        raise RuntimeError(f"smtpd-filters-link linked nothing:\n{r.stdout}\n{r.stderr}")
    (overlay / ".ready").write_text("\n".join(linked) + "\n")
    return overlay


class _LibexecNamespace(Namespace):
    def __init__(self, workdir: Path, overlay: Path, **kw) -> None:
        super().__init__(workdir, **kw)
        self.overlay = overlay

    def start(self, timeout: float = 10.0) -> "Namespace":
        super().start(timeout)
        r = self.run(["mount", "--bind", str(self.overlay), str(LIBEXEC)])
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"bind-mounting {self.overlay} on {LIBEXEC} failed: {r.stderr}")
        return self


class BareSmtpdServer(SmtpdServer):
    """An SmtpdServer whose namespace sees the py-filter-* links in libexec."""

    def __init__(self, runtime: Runtime, *args, **kw) -> None:
        super().__init__(runtime, *args, **kw)
        self.ns = _LibexecNamespace(self.dir / "ns", libexec_overlay(runtime), share_net_with=self.ns.share_net_with)


@pytest.fixture(scope="module")
def bare_smtpd_factory(e2e_runtime):
    """Like ``smtpd_factory``, for filters named bare (``py-filter-…``)."""
    from e2e_harness.smtpd import server_pool

    yield from server_pool(e2e_runtime, BareSmtpdServer)


def filter_pids(server: SmtpdServer, name: str) -> list[int]:
    """PIDs of processes in the server's namespace running ``name``."""
    out = []
    for pid in server.ns.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if name in cmd:
            out.append(pid)
    return out
