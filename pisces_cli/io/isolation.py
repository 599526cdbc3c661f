"""Running decoders where they cannot take the run down: child processes, crash and time-limit errors.

Video decoders are native code: a damaged or hostile file can make them segfault, abort
(``std::bad_alloc``) or loop forever, and no Python ``try`` catches that. pisces therefore decodes in
child processes and turns a child's death, or its passing a time limit, into a
:class:`~pisces_cli.io.video.VideoDecodeError` for that one video:

- :class:`~pisces_cli.io.dataset.VideoLoader` keeps a pool of decode workers for whole folders;
- :func:`call_isolated` runs one call in a fresh child (``eval``'s full-length pixel metrics).

Children are forked where the platform allows (nothing is pickled on the way in, and a test double
patched into the parent is inherited), else spawned. They ignore Ctrl-C: the main process owns the
interrupt and stops them, so an interrupted run prints no traceback from a child.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from pisces_cli.errors import PiscesError, PiscesRuntimeError
from pisces_cli.io.video import VideoDecodeError

__all__ = ["call_isolated", "crashed", "exit_description", "process_context", "quiet_child", "timed_out"]


def process_context() -> Any:
    """The multiprocessing context for decode children: ``fork`` where available, else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def exit_description(exitcode: int | None) -> str:
    """``killed by SIGSEGV`` / ``exited with status 3`` for a child's ``exitcode``."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def crashed(label: str, exitcode: int | None, pid: int | None) -> VideoDecodeError:
    """The error of a video whose decoding process died."""
    how = exit_description(exitcode)
    return VideoDecodeError(
        label,
        f"the decoder crashed ({how})",
        f"decode process {pid} {how} while decoding this video; other videos are decoded by fresh processes",
    )


def timed_out(label: str, limit_s: float) -> VideoDecodeError:
    """The error of a video whose decoding passed ``limit_s`` seconds (its process was killed)."""
    return VideoDecodeError(
        label,
        f"decoding took longer than {limit_s:g} s (runtime.decode_timeout_s)",
        f"the decode process was killed after {limit_s:g} s on this video",
    )


#: How often (seconds) a decode child checks that the process that started it is still alive.
PARENT_CHECK_S = 1.0


def quiet_child() -> None:
    """Set up a decode child: Ctrl-C is the main process's to handle, and a crash is reported as the
    video's error row, so no stack dump of the child (``faulthandler``) is printed on the way down.

    SIGTERM ends the child (whatever handler it inherited), and the child ends itself within
    :data:`PARENT_CHECK_S` seconds once the main process is gone (killed with SIGKILL, OOM-killed): a
    forked child holds copies of the main process's pipe ends, so it would never see the end of its pipe
    and would keep its memory for ever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    faulthandler.disable()
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int | None) -> None:
    """End this process (no clean-up: there is nobody left to report to) once ``parent_pid`` is gone."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:  # re-parented: the process that started us died
            os._exit(0)


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> None:
    quiet_child()
    try:
        outcome: tuple[str, Any] = ("ok", fn(*args))
    except PiscesError as exc:
        outcome = ("error", exc)
    except Exception as exc:  # unexpected: report it as this video's failure, not the run's
        outcome = ("error", PiscesRuntimeError(f"cannot use video {label}: {type(exc).__name__}: {exc}"))
    conn.send(outcome)
    conn.close()


def call_isolated(fn: Callable[..., Any], *args: Any, label: str, timeout_s: float | None) -> Any:
    """``fn(*args)`` computed in a child process; its (picklable) result is returned.

    Raises:
        VideoDecodeError: the child died (:func:`crashed`) or passed ``timeout_s`` seconds
            (:func:`timed_out`; ``None``: no limit).
        PiscesError: what ``fn`` raised (other exceptions become :class:`PiscesRuntimeError`).
    """
    context = process_context()
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(child, fn, args, label), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            process.kill()
            process.join(timeout=5)
            raise timed_out(label, float(timeout_s or 0))
        try:
            status, value = parent.recv()
        except (EOFError, OSError):
            process.join(timeout=5)
            raise crashed(label, process.exitcode, process.pid) from None
    finally:
        parent.close()
        if process.is_alive():
            process.kill()
        process.join(timeout=5)
    if status == "error":
        raise value
    return value
