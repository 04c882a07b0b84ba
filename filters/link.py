"""smtpd-filters-link: make the py-filter-* commands runnable by bare name.

smtpd runs a ``proc-exec`` command that does not start with ``/`` from its
libexec directory (``/usr/libexec/opensmtpd`` on Debian/Ubuntu,
``/usr/local/libexec/smtpd`` on OpenBSD, ``/usr/local/libexec/opensmtpd`` for
a portable build from source).  pip puts console scripts in a ``bin``
directory instead, so after installing::

    smtpd-filters-link --libexec /usr/libexec/opensmtpd      # symlinks py-filter-*
    smtpd-filters-link --libexec /usr/libexec/opensmtpd --remove   # undo

and ``filter "ss" proc-exec "py-filter-senderscore -junkBelow 70"`` works.
Only symbolic links are created or removed: an existing file of the same name
is never replaced (``--force`` replaces another *link*), and ``--remove`` only
removes links that point to a py-filter-* script.  The scripts, their
interpreter and every directory above them must be readable and executable by
smtpd's filter user (``opensmtpd`` on Debian, ``_smtpd`` on OpenBSD; a venv
under /root is not): the tool checks and warns.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import sysconfig
from pathlib import Path

PREFIX = "py-filter-"
DISTRIBUTION = "smtpd-filters"
LIBEXEC_CANDIDATES = ("/usr/libexec/opensmtpd", "/usr/local/libexec/smtpd", "/usr/local/libexec/opensmtpd")


def our_scripts() -> list[str]:
    """The py-filter-* console scripts this distribution declares."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        eps = distribution(DISTRIBUTION).entry_points
    except (ImportError, PackageNotFoundError):
        return []
    return sorted(ep.name for ep in eps if ep.group == "console_scripts" and ep.name.startswith(PREFIX))


def default_bindir() -> Path:
    here = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else None
    if here is not None and any(here.glob(PREFIX + "*")):
        return here
    return Path(sysconfig.get_path("scripts"))


def default_libexec() -> Path | None:
    for candidate in LIBEXEC_CANDIDATES:
        if os.path.isdir(candidate):
            return Path(candidate)
    return None


def world_usable(path: Path) -> str | None:
    """Why an unprivileged user could not run ``path``, or None."""
    try:
        real = path.resolve(strict=True)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    for parent in reversed(real.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            return f"directory {parent} is not searchable by other users (chmod o+x)"
    mode = real.stat().st_mode
    if not (mode & stat.S_IROTH and mode & stat.S_IXOTH):
        return f"{real} is not readable and executable by other users (chmod o+rx)"
    return None


def interpreter(script: Path) -> Path | None:
    try:
        with open(script, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].strip().split()
    return Path(parts[0].decode(errors="replace")) if parts else None


def link(libexec: Path, bindir: Path, names: list[str], force: bool, dry_run: bool) -> int:
    status = 0
    for name in names:
        target = (bindir / name).absolute()
        dest = libexec / name
        if not target.exists():
            print(f"{name}: not found in {bindir}", file=sys.stderr)
            status = 1
            continue
        if dest.is_symlink():
            if Path(os.readlink(dest)) == target:
                print(f"{dest} -> {target} (already there)")
                continue
            if not force:
                print(f"{dest}: a link to {os.readlink(dest)} is already there (--force replaces it)", file=sys.stderr)
                status = 1
                continue
            if not dry_run:
                dest.unlink()
        elif dest.exists():
            print(f"{dest}: a file that is not a link is already there; not touched", file=sys.stderr)
            status = 1
            continue
        if not dry_run:
            os.symlink(target, dest)
        print(f"{dest} -> {target}{' (dry run)' if dry_run else ''}")
        for what in (target, interpreter(target)):
            if what is None:
                continue
            problem = world_usable(what)
            if problem:
                print(f"warning: smtpd's filter user cannot run {name}: {problem}", file=sys.stderr)
    return status


def remove(libexec: Path, names: list[str], dry_run: bool) -> int:
    status = 0
    for name in names:
        dest = libexec / name
        if not dest.is_symlink():
            if dest.exists():
                print(f"{dest}: not a link; not touched", file=sys.stderr)
                status = 1
            continue
        target = os.readlink(dest)
        if not os.path.basename(target).startswith(PREFIX):
            print(f"{dest}: links to {target}, not to a {PREFIX}* script; not touched", file=sys.stderr)
            status = 1
            continue
        if not dry_run:
            dest.unlink()
        print(f"removed {dest}{' (dry run)' if dry_run else ''}")
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="smtpd-filters-link",
        description="Link the installed py-filter-* scripts into smtpd's libexec directory "
        "so smtpd.conf can name them bare (proc-exec \"py-filter-senderscore ...\").",
    )
    ap.add_argument("--libexec", type=Path, help=f"smtpd's libexec directory (default: the first of {', '.join(LIBEXEC_CANDIDATES)} that exists)")
    ap.add_argument("--bindir", type=Path, help="where the py-filter-* scripts are (default: next to this command)")
    ap.add_argument("--remove", action="store_true", help="remove the links instead")
    ap.add_argument("--force", action="store_true", help="replace existing links of the same names")
    ap.add_argument("--dry-run", action="store_true", help="say what would be done")
    ap.add_argument("names", nargs="*", help="scripts to link (default: every py-filter-* script)")
    a = ap.parse_args(argv)
    libexec = a.libexec or default_libexec()
    if libexec is None:
        ap.error("no libexec directory found; give --libexec DIR")
    if not libexec.is_dir():
        ap.error(f"{libexec} is not a directory")
    bindir = a.bindir or default_bindir()
    names = list(a.names)
    for n in names:
        if "/" in n or not n.startswith(PREFIX):
            ap.error(f"{n!r} is not a {PREFIX}* script name")
    if not names:
        names = our_scripts() or sorted(p.name for p in bindir.glob(PREFIX + "*"))
        if a.remove:
            names = sorted(set(names) | {p.name for p in libexec.glob(PREFIX + "*")})
    if not names or (not a.remove and not any((bindir / n).exists() for n in names)):
        ap.error(f"no {PREFIX}* scripts found in {bindir}; give --bindir DIR")
    if a.remove:
        return remove(libexec, names, a.dry_run)
    return link(libexec, bindir, names, a.force, a.dry_run)


if __name__ == "__main__":
    sys.exit(main())
