"""smtpd-filters-link: symlinks py-filter-* into smtpd's libexec dir, and back."""

from __future__ import annotations

import os

import pytest

import filterkit  # noqa: F401
from smtpd_filters import link


@pytest.fixture
def dirs(tmp_path):
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    for name in link.our_scripts():  # what an install of this checkout puts in bin/
        p = bindir / name
        p.write_text(f"#!{bindir}/python\nprint('x')\n")
        p.chmod(0o755)
    (bindir / "python").symlink_to("/usr/bin/python3")
    (bindir / "unrelated").write_text("")
    libexec = tmp_path / "libexec"
    libexec.mkdir()
    (libexec / "filter-senderscore").write_text("the Go one")
    return bindir, libexec


def test_link_and_remove(dirs, capsys):
    bindir, libexec = dirs
    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir)]) == 0
    assert {"py-filter-senderscore", "py-filter-rdns", "py-filter-dkimsign"} <= set(link.our_scripts())
    for name in link.our_scripts():
        dest = libexec / name
        assert dest.is_symlink() and os.readlink(dest) == str(bindir / name)
    assert not (libexec / "unrelated").exists()
    assert (libexec / "filter-senderscore").read_text() == "the Go one"
    out = capsys.readouterr()
    assert "py-filter-rdns ->" in out.out
    # tmp_path is not searchable by other users: smtpd's user could not run it
    assert "warning: smtpd's filter user cannot run" in out.err

    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir)]) == 0  # idempotent
    assert "already there" in capsys.readouterr().out

    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir), "--remove"]) == 0
    assert not list(libexec.glob("py-filter-*"))
    assert (libexec / "filter-senderscore").exists()


def test_never_replaces_a_file_and_only_removes_its_own_links(dirs, capsys):
    bindir, libexec = dirs
    (libexec / "py-filter-rdns").write_text("someone else's")
    (libexec / "py-filter-other").symlink_to("/usr/bin/true")
    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir)]) == 1
    assert (libexec / "py-filter-rdns").read_text() == "someone else's"
    assert "not a link" in capsys.readouterr().err
    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir), "--remove"]) == 1
    assert (libexec / "py-filter-rdns").exists() and (libexec / "py-filter-other").is_symlink()
    assert not (libexec / "py-filter-senderscore").exists()


def test_force_replaces_a_stale_link_and_dry_run_changes_nothing(dirs):
    bindir, libexec = dirs
    (libexec / "py-filter-rdns").symlink_to("/old/venv/bin/py-filter-rdns")
    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir), "py-filter-rdns"]) == 1
    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir), "--force", "--dry-run"]) == 0
    assert os.readlink(libexec / "py-filter-rdns") == "/old/venv/bin/py-filter-rdns"
    assert not (libexec / "py-filter-senderscore").exists()
    assert link.main(["--libexec", str(libexec), "--bindir", str(bindir), "--force"]) == 0
    assert os.readlink(libexec / "py-filter-rdns") == str(bindir / "py-filter-rdns")


def test_usage_errors(dirs, tmp_path):
    bindir, libexec = dirs
    with pytest.raises(SystemExit) as exc:
        link.main(["--libexec", str(tmp_path / "nope"), "--bindir", str(bindir)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        link.main(["--libexec", str(libexec), "--bindir", str(bindir), "../etc/passwd"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        link.main(["--libexec", str(libexec), "--bindir", str(empty)])
