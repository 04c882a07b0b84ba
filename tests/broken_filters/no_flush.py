"""Uses print() without flush: stdout is a socket, so Python block-buffers it
and nothing reaches smtpd (PYTHONUNBUFFERED would hide this)."""
import sys

for line in sys.stdin:
    line = line.rstrip("\n")
    if line == "config|ready":
        print("register|filter|smtp-in|connect")
        print("register|ready")
    elif line.startswith("filter|"):
        parts = line.split("|")
        print(f"filter-result|{parts[5]}|{parts[6]}|proceed")
