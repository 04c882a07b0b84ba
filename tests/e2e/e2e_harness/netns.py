"""A private network + mount namespace whose only interface is ``lo``.

Like shared/rig/rig-ns.sh: a holder process (``unshare -n -m --propagation
private sh -c '... exec sleep infinity'``) owns the namespaces; inside it
``/etc/resolv.conf`` (nameserver 127.0.0.1), ``/etc/hosts``, ``/var/spool``
(smtpd's compiled-in queue dir) and ``/run`` (its control socket) are private
bind mounts, so nothing touches the system's files and nothing can send a
packet anywhere but loopback.

Processes are started inside with ``nsenter -t HOLDER -n -m`` (:meth:`popen`,
:meth:`run`).  The test process itself reaches into the namespace for client
sockets only: :meth:`socket` creates a socket in a short-lived thread that
first joins the network namespace with ``setns(2)`` (via ctypes: ``os.setns``
is 3.12+).  ``setns`` affects only the calling thread, and a socket stays in the
namespace it was created in, so the rest of the test process is untouched.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

HOSTS_NAMES = ("mx.e2e.test", "e2e.test")


def _death_guard() -> list[str]:
    """Prefix that makes a child get SIGTERM if the test process dies (setpriv
    execs in place and the parent-death signal survives the exec of nsenter,
    unshare and smtpd), so a killed pytest leaves nothing behind."""
    return ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


def _in_thread_netns(ns_fd: int, fn: Callable[[], T]) -> T:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name="in-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def stop_pid(pid: int, timeout: float = 5.0, popen: subprocess.Popen | None = None) -> None:
    """SIGTERM one process by PID, SIGKILL it if it is still there after ``timeout``."""

    def gone() -> bool:
        if popen is not None:
            return popen.poll() is not None
        return _proc_start_time(pid) is None or _is_zombie(pid)

    if gone():
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone():
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if popen is not None:
        popen.wait(5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Namespace:
    """Private net+mount namespace with its own files under ``workdir``."""

    def __init__(
        self, workdir: Path, hostname_aliases: Sequence[str] = HOSTS_NAMES, share_net_with: "Namespace | None" = None
    ) -> None:
        self.workdir = Path(workdir)
        self.aliases = tuple(hostname_aliases)
        #: another (started) namespace whose network this one joins: same
        #: loopback (e.g. two smtpd instances sharing one redis), own mounts
        #: (smtpd's queue and control socket are per mount namespace)
        self.share_net_with = share_net_with
        self.holder: subprocess.Popen | None = None
        self._ns_fd: int | None = None
        self.net_inode: int | None = None
        self.mnt_inode: int | None = None

    # -- lifecycle
    def start(self, timeout: float = 10.0) -> "Namespace":
        w = self.workdir
        etc, spool, run = w / "etc", w / "varspool", w / "run"
        for d in (etc, spool / "smtpd", run):
            d.mkdir(parents=True, exist_ok=True)
        for d in (w, etc, spool, run):
            d.chmod(0o755)
        os.chown(spool / "smtpd", 0, 0)
        (spool / "smtpd").chmod(0o711)  # smtpd insists on root:root 0711
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (etc / "hosts").write_text(
            "127.0.0.1 localhost\n"
            "::1 localhost ip6-localhost ip6-loopback\n"
            f"127.0.0.1 {socket.gethostname()} {' '.join(self.aliases)}\n"
        )
        for f in ("resolv.conf", "hosts"):
            (etc / f).chmod(0o644)
        script = (
            "set -e; ip link set lo up; "
            f"mount --bind '{etc}/resolv.conf' /etc/resolv.conf; "
            f"mount --bind '{etc}/hosts' /etc/hosts; "
            f"mount --bind '{spool}' /var/spool; "
            f"mount --bind '{run}' /run; "
            "echo ready; exec sleep infinity"
        )
        # unshare and sh exec in place: the Popen PID is the holder's PID.
        if self.share_net_with is None:
            unshare = ["unshare", "-n", "-m"]
        else:
            unshare = ["nsenter", "-t", str(self.share_net_with.pid), "-n", "--", "unshare", "-m"]
        with open(w / "ns.log", "wb") as errlog:
            self.holder = subprocess.Popen(
                [*_death_guard(), *unshare, "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errlog,
                start_new_session=True,
            )
        assert self.holder.stdout is not None
        ready, _, _ = select.select([self.holder.stdout], [], [], timeout)
        line = self.holder.stdout.readline() if ready else b""
        self.holder.stdout.close()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"namespace holder failed: {(w / 'ns.log').read_text(errors='replace')}")
        self._ns_fd = os.open(f"/proc/{self.holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.net_inode = os.fstat(self._ns_fd).st_ino
        self.mnt_inode = os.stat(f"/proc/{self.holder.pid}/ns/mnt").st_ino
        expected = self.share_net_with.net_inode if self.share_net_with else None
        if self.net_inode == os.stat("/proc/self/ns/net").st_ino or (expected and self.net_inode != expected):
            self.stop()
            raise RuntimeError("unshare did not create (or join) the intended network namespace")
        return self

    @property
    def pid(self) -> int:
        assert self.holder is not None, "namespace not started"
        return self.holder.pid

    def alive(self) -> bool:
        return self.holder is not None and self.holder.poll() is None

    def pids(self) -> list[int]:
        """PIDs of every process in this network + mount namespace except the
        holder (the mount namespace tells apart namespaces sharing one network)."""
        out = []
        if self.net_inode is None:
            return out
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pid:
                continue
            try:
                if (
                    os.stat(f"/proc/{entry}/ns/net").st_ino == self.net_inode
                    and os.stat(f"/proc/{entry}/ns/mnt").st_ino == self.mnt_inode
                    and not _is_zombie(int(entry))
                ):
                    out.append(int(entry))
            except OSError:
                continue
        return out

    def kill_leftovers(self, keep: Sequence[int] = (), timeout: float = 3.0) -> list[tuple[int, str]]:
        """Stop (by PID) every process still in the namespace except ``keep``.

        Everything in the namespace was started by us (or by smtpd we started),
        so this is the by-PID cleanup of whatever outlived its parent.
        Returns ``(pid, command line)`` of each process that had to be stopped."""
        victims = [p for p in self.pids() if p not in keep]
        found = [(p, _cmdline(p)) for p in victims]
        for p in victims:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p in self.pids() for p in victims):
            time.sleep(0.05)
        for p in victims:
            if p in self.pids():
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return found

    def stop(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            self.kill_leftovers()
            stop_pid(self.holder.pid, popen=self.holder)
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    def __enter__(self) -> "Namespace":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- running things inside
    def nsenter_argv(self) -> list[str]:
        """Command prefix to run something inside (exec chain: same PID)."""
        return [*_death_guard(), "nsenter", "-t", str(self.pid), "-n", "-m", "--"]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start ``argv`` inside the namespace (nsenter execs it: same PID)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        return subprocess.Popen([*self.nsenter_argv(), *argv], **kw)

    def run(self, argv: Sequence[str], timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run([*self.nsenter_argv(), *argv], timeout=timeout, **kw)

    def in_netns(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` in a thread that has joined the namespace's network."""
        assert self._ns_fd is not None, "namespace not started"
        return _in_thread_netns(self._ns_fd, fn)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A new (unconnected) socket that lives in the namespace."""
        return self.in_netns(lambda: socket.socket(family, type))

    def create_connection(
        self, address: tuple[str, int], timeout: float | None = 30.0, source_address: Any = None
    ) -> socket.socket:
        """``socket.create_connection`` inside the namespace (loopback only)."""
        import ipaddress

        if not ipaddress.ip_address(address[0]).is_loopback:
            raise ValueError(f"loopback addresses only, not {address[0]!r}")
        return self.in_netns(lambda: socket.create_connection(address, timeout, source_address))

    def listening(self, port: int, proto: str = "tcp") -> bool:
        """Is something listening on ``port`` (any address) in the namespace?"""
        for f in (f"/proc/{self.pid}/net/{proto}", f"/proc/{self.pid}/net/{proto}6"):
            try:
                lines = Path(f).read_text().splitlines()[1:]
            except OSError:
                continue
            for ln in lines:
                parts = ln.split()
                local, state = parts[1], parts[3]
                if int(local.rsplit(":", 1)[1], 16) == port and (proto != "tcp" or state == "0A"):
                    return True
        return False


def have_namespaces() -> str | None:
    """None if private net+mount namespaces (with bind mounts) work here, else why not."""
    for tool in ("unshare", "nsenter", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (util-linux / iproute2 / mount)"
    try:
        r = subprocess.run(
            [
                "unshare", "-n", "-m", "--propagation", "private", "sh", "-c",
                "ip link set lo up && mount --bind /etc/hosts /etc/hosts && echo ok",
            ],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n -m failed: {e}"
    if r.returncode != 0 or r.stdout.strip() != "ok":
        return f"unshare -n -m does not work here (rc={r.returncode}): {r.stderr.strip()[:300]}"
    return None
