"""docs/quickstart.md, docs/fuzzing.md and docs/api.md cannot rot: every
code block of the guides is run (or, for the install and smtpd.conf blocks,
checked), and every name the API reference puts in backticks exists.

Blocks are told apart by their info string: ``python`` blocks start with a
``# PATH`` comment and are written there (the quickstart's install prefix
``/opt/smtpd-filters`` is this test's virtualenv, its
``/usr/local/share/smtpd-filters`` a scratch directory); ``console`` blocks
are run line by line (``$ `` lines), and the lines shown under a command
must start lines of its real output; ``console install`` blocks name this
project; ``smtpd.conf`` blocks pass ``smtpd -n``; ``log`` blocks show what
the filter really logs.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import smtpd_filter_sdk
from smtpd_filter_sdk.testing.harness import SubprocessHarness

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
VENV_BIN = Path(sys.executable).parent
SMTPD = shutil.which("smtpd") or ("/usr/sbin/smtpd" if os.path.exists("/usr/sbin/smtpd") else None)


def blocks(name: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block of docs/NAME."""
    text = (DOCS / name).read_text(encoding="utf-8")
    return [(info.strip(), body) for info, body in re.findall(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)]


def of_kind(name: str, info: str) -> list[str]:
    return [body for i, body in blocks(name) if i == info]


class Mapping:
    """The documented paths, mapped onto this machine."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self.pairs = pairs

    def __call__(self, text: str) -> str:
        for doc_path, real in self.pairs.items():
            text = text.replace(doc_path, real)
        return text


def write_python_blocks(name: str, mapping: Mapping) -> dict[str, Path]:
    written = {}
    for body in of_kind(name, "python"):
        first = body.splitlines()[0]
        if not first.startswith("# ") or not first.endswith(".py"):
            continue
        path = Path(mapping(first[2:].strip()))
        if not path.is_absolute():
            continue  # a file named relative to the reader's own project
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
        written[Path(first[2:].strip()).name] = path
    return written


def run_console(body: str, mapping: Mapping, cwd: Path, timeout: float = 180) -> None:
    """Run each ``$ `` line; the lines shown after it must start lines of its output."""
    commands: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif line.strip():
            commands[-1][1].append(line.strip())
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    for command, shown in commands:
        argv = shlex.split(mapping(command))
        if argv[0] == "cd":
            cwd = Path(argv[1])
            continue
        run = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert run.returncode == 0, f"$ {command}\n{run.stdout}\n{run.stderr}"
        actual = [" ".join(x.split()) for x in run.stdout.splitlines()]
        for expected in shown:
            want = " ".join(expected.split())
            assert any(a.startswith(want) for a in actual), f"$ {command}: no output line starts with {want!r}:\n{run.stdout}"


def smtpd_check(conf: str, tmp_path: Path) -> None:
    if SMTPD is None:
        if os.environ.get("SMTPD_FILTERS_REQUIRE_E2E") == "1":
            pytest.fail("smtpd is not installed: cannot check the smtpd.conf blocks")
        pytest.skip("smtpd is not installed: the smtpd.conf blocks are not checked")
    path = tmp_path / "smtpd.conf"
    path.write_text(conf)
    run = subprocess.run([SMTPD, "-n", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "configuration OK" in run.stdout + run.stderr, run.stdout + run.stderr


# -- quickstart ------------------------------------------------------------------------


@pytest.fixture
def quickstart(tmp_path) -> tuple[Mapping, Path]:
    share = tmp_path / "share"
    share.mkdir()
    mapping = Mapping({"/opt/smtpd-filters/bin/": f"{VENV_BIN}/", "/usr/local/share/smtpd-filters": str(share)})
    written = write_python_blocks("quickstart.md", mapping)
    assert set(written) == {"sender_domains.py", "test_sender_domains.py"}
    return mapping, share


def test_quickstart_install_block_names_this_project():
    (install,) = of_kind("quickstart.md", "console install")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    commands = [line[2:] for line in install.splitlines() if line.startswith("$ ")]
    assert commands[0] == "python3 -m venv /opt/smtpd-filters"
    pip = shlex.split(commands[1])
    assert pip[:2] == ["/opt/smtpd-filters/bin/pip", "install"]
    # a source checkout (the project is not on PyPI): an absolute path
    # named like the project, with an extra it declares
    where, _, extra = pip[2].partition("[")
    assert where.startswith("/") and where.rstrip("/").endswith("/" + project["name"])
    assert extra.rstrip("]") in extras
    # the commands the rest of the page uses come with it
    assert "smtpd-filter-check" in project["scripts"]


def test_quickstart_filter_its_test_and_the_checker_run_as_printed(quickstart):
    mapping, share = quickstart
    consoles = of_kind("quickstart.md", "console")
    assert len(consoles) == 2
    for body in consoles:
        run_console(body, mapping, share)


def test_quickstart_smtpd_conf_passes_smtpd_n(tmp_path):
    (conf,) = of_kind("quickstart.md", "smtpd.conf")
    for command in re.findall(r'proc-exec "([^"]+)"', conf):
        assert all(word.startswith("/") for word in command.split()[:2]), "absolute paths, as the page says"
    smtpd_check(conf, tmp_path)


def test_quickstart_log_is_what_the_filter_logs(quickstart):
    mapping, share = quickstart
    (conf,) = of_kind("quickstart.md", "smtpd.conf")
    name, command = re.search(r'filter "([^"]+)" proc-exec "([^"]+)"', conf).groups()
    (log,) = of_kind("quickstart.md", "log")
    lines = log.splitlines()
    ids = {re.search(r"\b([0-9a-f]{16})\b", line).group(1) for line in lines}
    assert len(ids) == 1, "one session"
    sid = ids.pop()
    with SubprocessHarness(mapping(command), "0.6", name=name) as h:
        s = h.session(src="192.0.2.1", rdns="mail.spam.example", port=41234)
        refused = s.send_message(from_="joe@Spam.Example", to=["bob@example.org"])
    (logged,) = h.stderr
    ours = [line.split(f"{name}: ", 1)[1] for line in lines if f" {name}: " in line]
    assert ours == [logged.replace(s.id, sid)]
    assert f'result="{refused.reply}"' in lines[-1]


# -- fuzzing ---------------------------------------------------------------------------


def fuzz_example() -> str:
    (body,) = [b for b in of_kind("fuzzing.md", "python") if b.startswith("# test_fuzz_my_filter.py")]
    return body


def run_pytest(path: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, str(path)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_fuzzing_example_passes(tmp_path):
    path = tmp_path / "test_fuzz_my_filter.py"
    path.write_text(fuzz_example())
    run = run_pytest(path, tmp_path)
    assert run.returncode == 0 and "3 passed" in run.stdout, run.stdout + run.stderr


def test_fuzzing_example_catches_a_broken_filter(tmp_path):
    broken = fuzz_example().replace("return masked if masked != line else None", "return None")
    assert broken != fuzz_example()
    path = tmp_path / "test_fuzz_my_filter.py"
    path.write_text(broken)
    # finding the failure is what counts here, not shrinking it
    (tmp_path / "conftest.py").write_text(
        "from hypothesis import Phase, settings\n"
        "settings.register_profile('no-shrink', phases=[Phase.generate])\n"
        "settings.load_profile('no-shrink')\n"
    )
    run = run_pytest(path, tmp_path, "-k", "card_number")
    assert run.returncode == 1 and "1 failed" in run.stdout, run.stdout + run.stderr
    assert "test_every_card_number_is_masked" in run.stdout


def test_replay_example_passes(tmp_path):
    (body,) = [b for b in of_kind("fuzzing.md", "python") if b.startswith("# test_replay_capture.py")]
    path = tmp_path / "test_replay_capture.py"
    path.write_text(body)
    run = run_pytest(path, ROOT, "--rootdir", str(tmp_path))  # the capture path is the checkout's
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize("index", range(3))
def test_fuzzing_console_blocks_run(index):
    consoles = of_kind("fuzzing.md", "console")
    assert len(consoles) == 3
    run_console(consoles[index], Mapping({".venv/bin/": f"{VENV_BIN}/"}), ROOT)


# -- the API reference -----------------------------------------------------------------

#: Words in backticks that are not Python names.
NOT_CODE = {"EHLO", "HELO", "bufio.Scanner"}
MODULES = ["smtpd_filter_sdk"] + [f"smtpd_filter_sdk.{m}" for m in
                                  ("filter", "responses", "session", "message", "protocol", "dns", "netaddr", "goflags", "log")]
#: The variables the page uses for instances.
INSTANCES = {"session": "Session", "tx": "Transaction", "headers": "Headers", "msg": "Message", "report": "Report", "watcher": "MessageWatcher",
             "resolver": "smtpd_filter_sdk.dns.Resolver"}


def _has(obj: object, attr: str) -> bool:
    if hasattr(obj, attr):
        return True
    return dataclasses.is_dataclass(obj) and attr in {f.name for f in dataclasses.fields(obj)}


def _resolve(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == "f":
        obj: object = smtpd_filter_sdk.Filter("doc")
        parts = parts[1:]
    elif parts[0] in INSTANCES and len(parts) > 1:
        return _resolve(INSTANCES[parts[0]] + "." + ".".join(parts[1:]))
    elif parts[0] == "smtpd_filter_sdk":
        module = None
        for i in range(len(parts), 0, -1):
            try:
                module = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            parts = parts[i:]
            break
        obj = module
    else:
        homes = [importlib.import_module(m) for m in MODULES] + [builtins]
        found = [h for h in homes if hasattr(h, parts[0])]
        if not found:
            try:
                found = [importlib.import_module(parts[0])]  # a stdlib module
                parts = parts[1:]
                obj = found[0]
            except ImportError:
                return False
        else:
            obj = getattr(found[0], parts[0])
            parts = parts[1:]
    for part in parts:
        if not _has(obj, part):
            return False
        obj = getattr(obj, part, None)
    return True


def api_names() -> set[str]:
    text = re.sub(r"```.*?```", "", (DOCS / "api.md").read_text(encoding="utf-8"), flags=re.S)
    pattern = re.compile(r"@?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(.*\))?")
    names = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        m = pattern.fullmatch(span)
        if m and ("(" in span or "." in span or span[0] == "@" or span[0].isupper()) and m.group(1) not in NOT_CODE:
            names.add(m.group(1))
    return names


def test_every_name_in_the_api_reference_exists():
    names = api_names()
    assert len(names) > 80
    assert sorted(n for n in names if not _resolve(n)) == []


def test_the_api_reference_covers_the_public_api():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [n for n in smtpd_filter_sdk.__all__ if f"`{n}" not in text and f"{n}()" not in text]
    assert missing == []
    for decorator in ("on", "on_report", "on_data_line", "on_headers", "on_message", "on_message_stream", "on_oversize", "on_reload", "on_config"):
        assert f"`@f.{decorator}" in text


def test_the_name_check_can_fail():
    assert not _resolve("Session.no_such_attribute")
    assert not _resolve("f.on_everything")
    assert not _resolve("smtpd_filter_sdk.dns.NoResolver")
    assert _resolve("session.tx") and _resolve("f.on_headers") and _resolve("msg.body")
