"""filters/README.md says what the code does: every flag of every filter
with a section is in that section (a table row carries its default), the
smtpd.conf of "Putting it together" passes ``smtpd -n``, and each of its
command lines parses with the filter's own flags (for the filters present
in this checkout)."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "filters" / "README.md").read_text(encoding="utf-8")
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SMTPD = shutil.which("smtpd") or ("/usr/sbin/smtpd" if os.path.exists("/usr/sbin/smtpd") else None)


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"no section '## {title}'"
    return m.group(1)


def filter_module(command: str):
    """The module of a py-filter-* console script, or None if not in this checkout."""
    target = SCRIPTS.get(command)
    if target is None:
        return None
    return importlib.import_module(target.split(":")[0])


def sections_with_flags() -> list[str]:
    names = re.findall(r"^## (py-filter-[\w-]+)$", README, re.M)
    return [n for n in names if filter_module(n) is not None and hasattr(filter_module(n), "flags")]


def default_forms(flag) -> set[str]:
    value = flag.default
    if flag.kind == "bool":
        return {"on"} if value else {"off"}
    if isinstance(value, float):
        return {f"{value:g}"}
    if isinstance(value, int):
        forms = {str(value), f"{value:,}"}
        if value and value % (1 << 20) == 0:
            forms |= {f"{value >> 20} MiB", f"{value >> 20} MB"}
        return forms
    return {str(value)}


def test_the_landed_filters_have_sections():
    assert {"py-filter-senderscore", "py-filter-rdns"} <= set(sections_with_flags())


@pytest.mark.parametrize("name", sections_with_flags())
def test_every_flag_is_documented_with_its_default(name):
    text = section(name)
    for flag in filter_module(name).flags()._order:
        if flag.hidden:
            continue
        assert re.search(rf"`-{re.escape(flag.name)}\b", text), f"{name}: -{flag.name} is not in its section"
        rows = [line for line in text.splitlines() if line.startswith("|") and re.search(rf"`-{re.escape(flag.name)}\b", line.split("|")[1])]
        if rows and flag.default not in ("", None, (), []):  # no default to show (e.g. a repeatable flag)
            cell = rows[0].split("|")[2]
            if isinstance(flag.default, str) and len(flag.default) > 40:
                assert cell.strip(), f"{name}: -{flag.name} has no default in its row"  # a long list may be named instead
                continue
            assert any(form in cell for form in default_forms(flag)), f"{name}: -{flag.name} default {flag.default!r}, the table says {cell.strip()!r}"


def together_conf() -> str:
    (conf,) = re.findall(r"```smtpd.conf\n(.*?)```", section("Putting it together"), re.S)
    return conf


def test_putting_it_together_names_the_five_filters():
    commands = dict(re.findall(r'filter "([\w-]+)"\s+proc-exec "([^"]+)"', together_conf()))
    assert {c.split()[0] for c in commands.values()} == {
        "py-filter-rdns", "py-filter-senderscore", "py-filter-spamtraps", "py-filter-rspamd", "py-filter-dkimsign",
    }
    assert 'filter "inbound"     chain { "rdns", "senderscore", "spamtraps", "rspamd" }' in together_conf()
    assert re.search(r'listen on .* port 587 tls-require .* auth filter "dkimsign"', together_conf())


def test_putting_it_together_command_lines_parse():
    checked = 0
    for command in re.findall(r'proc-exec "([^"]+)"', together_conf()):
        argv = shlex.split(command)
        module = filter_module(argv[0])
        if module is None:
            continue  # that filter is not in this checkout yet
        module.flags().parse_or_raise(argv[1:])
        checked += 1
    assert checked >= 2


def test_putting_it_together_passes_smtpd_n(tmp_path):
    if SMTPD is None:
        if os.environ.get("SMTPD_FILTERS_REQUIRE_E2E") == "1":
            pytest.fail("smtpd is not installed: cannot check the smtpd.conf")
        pytest.skip("smtpd is not installed")
    cert, key = tmp_path / "mx.crt", tmp_path / "mx.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=mx.example.org"],
        check=True, capture_output=True, timeout=60,
    )
    conf = together_conf().replace("/etc/ssl/mx.example.org.crt", str(cert)).replace("/etc/ssl/private/mx.example.org.key", str(key))
    assert conf != together_conf()
    path = tmp_path / "smtpd.conf"
    path.write_text(conf)
    run = subprocess.run([SMTPD, "-n", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "configuration OK" in run.stdout + run.stderr, run.stdout + run.stderr
