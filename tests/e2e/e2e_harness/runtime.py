"""A Python runtime the unprivileged smtpd filter user can execute.

smtpd runs proc-exec filters as ``opensmtpd``; /root is 0700 and the dev/CI
interpreter may live under it, so filters get their own world-readable runtime
under ``/var/tmp/smtpd-filters-e2e-<uid>/``:

* ``deps-<hash>/``: the project's third-party dependencies (``pip install
  --target``, run by the system python so wheels match it), cached across runs
  and keyed by the dependency list + interpreter;
* ``session-<pid>-<rand>/``: per test session, removed at the end:
  ``venv/`` (``/usr/bin/python3 -m venv --without-pip``; a ``.pth`` file puts
  ``src/`` and the deps dir on its path), ``src/`` (a copy of
  ``smtpd_filter_sdk`` and of ``filters/`` as ``smtpd_filters``, precompiled),
  ``examples/`` and ``testfilters/`` (copies of the repo's examples and of
  tests/e2e/filters), ``tlsfix/`` and one directory per smtpd instance.

The copy is taken once per session, so a test run sees one consistent snapshot
of the working tree.  Set ``SMTPD_FILTERS_E2E_KEEP=1`` to keep the session dir.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .prereq import PrerequisiteError

SYSTEM_PYTHON = "/usr/bin/python3"
FILTER_USER = "opensmtpd"
HERE = Path(__file__).resolve().parent
E2E_DIR = HERE.parent
REPO = E2E_DIR.parent.parent


def base_dir() -> Path:
    """``$SMTPD_FILTERS_E2E_BASE`` or /var/tmp/smtpd-filters-e2e-<uid> (every
    component of the path must be traversable by the filter user)."""
    base = Path(os.environ.get("SMTPD_FILTERS_E2E_BASE") or f"/var/tmp/smtpd-filters-e2e-{os.getuid()}")
    try:
        base.mkdir(mode=0o755)
    except FileExistsError:
        pass
    st = os.lstat(base)
    # /var/tmp is world-writable: never follow somebody else's symlink/dir
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PrerequisiteError(f"{base} is not a directory owned by uid {os.getuid()}")
    base.chmod(0o755)
    return base


def _run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise PrerequisiteError(f"{what} failed (rc={r.returncode}): {' '.join(argv)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _make_readable(path: Path) -> None:
    """chmod a+rX recursively (dirs 755, files keep x bits, gain read)."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                continue
            m = os.stat(p).st_mode
            os.chmod(p, m | 0o444 | (0o111 if m & 0o100 else 0))


def project_dependencies(repo: Path = REPO) -> list[str]:
    """Runtime requirements: core dependencies + every optional group but test/all."""
    meta = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    deps = list(meta.get("dependencies", []))
    for group, reqs in sorted(meta.get("optional-dependencies", {}).items()):
        if group in ("test", "all"):
            continue
        deps += [r for r in reqs if not r.startswith(meta["name"])]
    return sorted(set(deps))


def _system_python_id() -> str:
    r = _run([SYSTEM_PYTHON, "-c", "import sys,platform; print(sys.version, platform.machine())"], "system python")
    return r.stdout.strip()


def ensure_deps(base: Path, deps: list[str]) -> Path:
    key = hashlib.sha256(json.dumps([deps, _system_python_id()]).encode()).hexdigest()[:16]
    final = base / f"deps-{key}"
    if (final / ".complete").exists():
        os.utime(final)  # in use: not stale for another checkout's cleanup
        return final
    with open(base / "deps.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        tmp = base / f"deps-{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        builder = tmp / ".builder-venv"
        _run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(builder)], "venv for the dependency install")
        try:
            _run(
                [
                    sys.executable, "-m", "pip", "--python", str(builder / "bin" / "python"),
                    "install", "--quiet", "--disable-pip-version-check", "--no-warn-script-location",
                    "--target", str(tmp), *deps,
                ],
                "pip install of the filter runtime's dependencies",
                timeout=900,
            )
        finally:
            shutil.rmtree(builder, ignore_errors=True)
        _make_readable(tmp)
        (tmp / ".complete").write_text("\n".join(deps) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        # old caches of other dependency sets; one used in the last day may
        # belong to a test run of another checkout going on right now
        stale = time.time() - 86400
        for old in base.glob("deps-*"):
            if old != final and old.is_dir() and ".tmp-" not in old.name and old.stat().st_mtime < stale:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _clean_stale_sessions(base: Path) -> None:
    for d in base.glob("session-*"):
        try:
            pid = int(d.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")


@dataclass
class Runtime:
    root: Path
    python: str
    src: Path
    examples: Path
    test_filters: Path
    deps: Path
    _tlsfix: Path | None = field(default=None, repr=False)

    def command(self, script: str | os.PathLike[str], *args: str) -> str:
        """A proc-exec command line: ``<runtime python> <script> <args...>`` (shell-quoted)."""
        cmd = " ".join(shlex.quote(str(x)) for x in (self.python, script, *args))
        if '"' in cmd:
            raise ValueError(f"a proc-exec command cannot contain a double quote: {cmd}")
        return cmd

    def example(self, name: str, *args: str) -> str:
        """Command line for ``examples/<name>`` run by the runtime python."""
        path = self.examples / name
        if not path.exists():
            raise FileNotFoundError(f"no example {name} in {self.examples} (copied from {REPO / 'examples'})")
        return self.command(path, *args)

    def test_filter(self, name: str, *args: str) -> str:
        """Command line for ``tests/e2e/filters/<name>``."""
        path = self.test_filters / name
        if not path.exists():
            raise FileNotFoundError(path)
        return self.command(path, *args)

    def module(self, module: str, *args: str) -> str:
        """Command line for ``python -m module``."""
        return self.command("-m", module, *args)

    def new_dir(self, prefix: str) -> Path:
        """A fresh world-traversable directory in the session dir."""
        d = self.root / f"{prefix}-{secrets.token_hex(3)}"
        d.mkdir(mode=0o755)
        d.chmod(0o755)
        return d

    def tlsfix(self) -> Path:
        """Build (once per session) the LD_PRELOAD shim smtpd 6.8.0p2 needs for TLS."""
        if self._tlsfix is None:
            if shutil.which("gcc") is None:
                raise PrerequisiteError("gcc not found: cannot build tests/e2e/tlsfix (apt-get install gcc libc6-dev)")
            out = self.root / "tlsfix" / "libsmtpd-tlsfix.so"
            out.parent.mkdir(mode=0o755, exist_ok=True)
            _run(
                ["gcc", "-O2", "-shared", "-fPIC", "-o", str(out), str(E2E_DIR / "tlsfix" / "tlsfix.c"), "-ldl"],
                "building the TLS shim",
            )
            out.chmod(0o755)
            self._tlsfix = out
        return self._tlsfix

    def cleanup(self) -> None:
        if os.environ.get("SMTPD_FILTERS_E2E_KEEP") == "1":
            print(f"\nkeeping e2e session dir {self.root}", file=sys.stderr)
            return
        shutil.rmtree(self.root, ignore_errors=True)


def build_runtime(repo: Path = REPO) -> Runtime:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise PrerequisiteError(f"{SYSTEM_PYTHON} not found (apt-get install python3 python3-venv)")
    base = base_dir()
    _clean_stale_sessions(base)
    deps = ensure_deps(base, project_dependencies(repo))
    root = base / f"session-{os.getpid()}-{secrets.token_hex(4)}"
    root.mkdir(mode=0o755)
    try:
        venv = root / "venv"
        _run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], "python3 -m venv (python3-venv)")
        src = root / "src"
        src.mkdir()
        shutil.copytree(repo / "smtpd_filter_sdk", src / "smtpd_filter_sdk", ignore=_IGNORE)
        if (repo / "filters").is_dir():
            shutil.copytree(repo / "filters", src / "smtpd_filters", ignore=_IGNORE)
        examples = root / "examples"
        if (repo / "examples").is_dir():
            shutil.copytree(repo / "examples", examples, ignore=_IGNORE)
        else:
            examples.mkdir()
        test_filters = root / "testfilters"
        shutil.copytree(E2E_DIR / "filters", test_filters, ignore=_IGNORE)
        python = venv / "bin" / "python"
        site = Path(
            _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], "venv").stdout.strip()
        )
        (site / "smtpd_filters_e2e.pth").write_text(f"{src}\n{deps}\n")
        _run([str(python), "-m", "compileall", "-q", str(src), str(examples), str(test_filters)], "compileall")
        _make_readable(root)
        rt = Runtime(root=root, python=str(python), src=src, examples=examples, test_filters=test_filters, deps=deps)
        # The proof: the unprivileged filter user can run it and import everything.
        probe = "import smtpd_filter_sdk, dns.resolver, smtpd_filter_sdk.testing.dnsserver; print('ok')"
        r = subprocess.run(
            [shutil.which("runuser") or "/usr/sbin/runuser", "-u", FILTER_USER, "--", str(python), "-c", probe],
            capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        if r.returncode != 0 or r.stdout.strip() != "ok":
            raise PrerequisiteError(f"user {FILTER_USER} cannot use the runtime {python}: {r.stderr[-2000:]}")
        return rt
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
