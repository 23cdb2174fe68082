"""Run untrusted Python (model-written code) in a limited subprocess, never in the library's process.

What :func:`run_python` does, and what it does not (also in docs/tasks.md):

- a fresh interpreter (``python -I``: isolated mode, no PYTHONPATH, no user site, no script dir on the
  path) with a minimal environment, in its own new temporary directory as the working directory, in its own
  session (process group) so the whole group is killed on a wall-clock timeout;
- ``resource`` limits set in the child before the untrusted code runs: CPU seconds (``RLIMIT_CPU``),
  address space (``RLIMIT_AS``: memory bombs get MemoryError), file size (``RLIMIT_FSIZE``: also caps stdout
  and stderr, which go to files), no new processes (``RLIMIT_NPROC = 0``; the kernel ignores it for root);
- a PEP 578 audit hook, installed before the untrusted code runs and impossible to remove from Python,
  that refuses: creating sockets or connecting (no network), starting processes (``os.system``, ``fork``,
  ``exec*``, ``posix_spawn``, ``subprocess``), signalling other processes, loading C code through
  ``ctypes``, and opening for writing, creating, deleting, renaming or changing the mode of any path outside
  the temporary directory.

Limits of this design, honestly: it is a best-effort sandbox in the same user account, not a security
boundary like a container, seccomp filter or separate user. C extensions already importable in the
interpreter (numpy, ...) can call libc without audit events; reading files outside the directory is
allowed (the interpreter must read its standard library); as root, ``RLIMIT_NPROC`` has no effect (the
audit hook still blocks Python-level process creation). Run untrusted code at scale in a container.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["SandboxResult", "run_python"]

_GUARD = r"""
import os, resource, sys


def _limit(kind, soft, hard):
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):
        pass


_limit(resource.RLIMIT_CPU, {cpu}, {cpu} + 1)
_limit(resource.RLIMIT_AS, {memory}, {memory})
_limit(resource.RLIMIT_FSIZE, {fsize}, {fsize})
_limit(resource.RLIMIT_NPROC, 0, 0)
_limit(resource.RLIMIT_CORE, 0, 0)

def _make_hook():
    # Everything the hook needs is captured here, so the untrusted program cannot patch it through module
    # globals (``import __main__``) or by replacing ``os.path.realpath``.
    root = os.path.realpath(os.getcwd())
    realpath, fsdecode, sep, pathlike = os.path.realpath, os.fsdecode, os.sep, os.PathLike
    blocked = frozenset((
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
        "os.killpg", "os.startfile", "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect",
        "socket.bind", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname", "ctypes.dlopen",
        "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "os.chroot", "os.setuid", "os.setgid",
        "resource.setrlimit", "resource.prlimit", "os.putenv", "os.unsetenv", "urllib.Request",
        "webbrowser.open", "os.pidfd_open", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "sys._current_frames", "function.__new__", "code.__new__",
    ))
    path_events = frozenset((
        "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
        "os.truncate", "os.utime", "os.chdir", "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr",
        "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
        "shutil.copytree", "shutil.chown",
    ))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    blocked_modules = frozenset(("ctypes", "_ctypes", "multiprocessing", "_posixsubprocess", "pty"))

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            real = realpath(fsdecode(path))
        except Exception:
            return False
        return real == root or real.startswith(root + sep)

    def hook(event, args):
        if event in blocked:
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            )
            if writing and path is not None and not inside(path):
                raise PermissionError("sandbox: writing outside the sandbox directory is not allowed")
        elif event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes, pathlike)) and not inside(arg):
                    raise PermissionError("sandbox: " + event + " outside the sandbox directory is not allowed")
        elif event == "import" and args and args[0] in blocked_modules:
            raise PermissionError("sandbox: importing " + str(args[0]) + " is not allowed")

    return hook


with open("program.py", encoding="utf-8") as _file:
    _source = _file.read()
_code = compile(_source, "program.py", "exec")
sys.addaudithook(_make_hook())
del _file, _source, _make_hook, _limit
exec(_code, {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


@dataclass(frozen=True, kw_only=True)
class SandboxResult:
    """What a sandboxed run did.

    Attributes:
        status: ``"passed"`` (exit 0), ``"failed"`` (non-zero exit, e.g. an assertion), ``"timeout"``
            (CPU or wall-clock limit), ``"memory"`` (MemoryError), ``"output_limit"`` (wrote too much).
        returncode: the exit status (negative: killed by that signal).
        stdout: the first ``max_output_bytes`` of standard output.
        stderr: the first ``max_output_bytes`` of standard error.
        seconds: wall-clock time.
    """

    status: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_python(
    source: str,
    *,
    cpu_seconds: int = 5,
    wall_seconds: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1_000_000,
) -> SandboxResult:
    """Run Python source in a sandboxed subprocess (see the module docstring for what is enforced).

    Args:
        source: the program.
        cpu_seconds: CPU-time limit.
        wall_seconds: wall-clock limit (sleeping programs use no CPU).
        memory_mb: address-space limit.
        max_output_bytes: limit on each output stream and on any file the program writes.

    Returns:
        A :class:`SandboxResult`.
    """
    if sys.platform == "win32":  # pragma: no cover
        raise RuntimeError("the sandbox needs a POSIX system (resource limits)")
    workdir = tempfile.mkdtemp(prefix="testtime-sandbox-")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as handle:
            handle.write(source)
        guard = _GUARD.format(cpu=int(cpu_seconds), memory=int(memory_mb) << 20, fsize=int(max_output_bytes))
        with open(os.path.join(workdir, "guard.py"), "w", encoding="utf-8") as handle:
            handle.write(guard)
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "HOME": workdir,
            "TMPDIR": workdir,
        }
        start = time.perf_counter()
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", "guard.py"],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            timed_out = False
            try:
                process.wait(timeout=wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        seconds = time.perf_counter() - start
        stdout = _read_head(out_path, max_output_bytes)
        stderr = _read_head(err_path, max_output_bytes)
        code = process.returncode
        if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL):
            status = "timeout"
        elif code == -signal.SIGXFSZ or "File too large" in stderr[-2000:]:  # Python ignores SIGXFSZ
            status = "output_limit"
        elif code == 0:
            status = "passed"
        elif "MemoryError" in stderr[-2000:]:
            status = "memory"
        else:
            status = "failed"
        return SandboxResult(status=status, returncode=code, stdout=stdout, stderr=stderr, seconds=seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_head(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""
