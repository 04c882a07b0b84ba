"""Control: reports on stderr how it was started (environment, fds, session)."""
import os
import stat

from rawfilter import Raw

st0, st1, st2 = (os.fstat(fd) for fd in (0, 1, 2))
os.write(2, ("env=" + ",".join(sorted(os.environ)) + "\n").encode())
os.write(2, f"fd0-is-fd1={st0.st_ino == st1.st_ino} fd0-socket={stat.S_ISSOCK(st0.st_mode)} "
            f"fd2-socket={stat.S_ISSOCK(st2.st_mode)} fd2-is-fd0={st2.st_ino == st0.st_ino} "
            f"session-leader={os.getsid(0) == os.getpid()}\n".encode())
Raw().run()
