"""Keeps running after smtpd closed its stdin."""
import time

from rawfilter import Raw

try:
    Raw().run()
except SystemExit:
    time.sleep(30)
