"""Ending a run at its time limit, even inside a loop that calls no torch op.

A watchdog thread raises :class:`StopScript` in the script's thread when the time is up, through the
interpreter's asynchronous-exception hook (``PyThreadState_SetAsyncExc``), which interrupts Python code
between bytecodes. A long single op (a C call) finishes first. The watchdog is disarmed under a lock
as the run's ``with`` block exits, so an exception it queued a moment before is delivered there, inside
the caller's ``except StopScript``, never later. (Withdrawing a queued exception with
``PyThreadState_SetAsyncExc(tid, NULL)`` is not an option: on CPython 3.11 it can leave the thread
spinning at the next traced call.)
"""

from __future__ import annotations

import ctypes
import threading

from .recorder import StopScript


class Deadline:
    def __init__(self, seconds: float, on_expiry) -> None:
        self._seconds = seconds
        self._on_expiry = on_expiry  # called in the watchdog thread, before the exception is raised
        self._target = threading.get_ident()
        self._lock = threading.Lock()
        self._armed = True
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.disarm()

    def _expire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self._on_expiry()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(StopScript))

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
            self._timer.cancel()
