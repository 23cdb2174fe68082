"""Run untrusted Python (model-written code) in a kernel-enforced sandbox, never in the library's process.

Two layers, the kernel's first (also in docs/tasks.md):

1. **bubblewrap** (``bwrap``, the sandbox Flatpak uses), when it is installed and works here: the program
   runs in new user, mount, PID, network, IPC and UTS namespaces with every capability dropped; the whole
   file system is mounted read-only, ``/tmp`` is a private empty tmpfs, ``/dev`` and ``/proc`` are fresh,
   and the only writable host directory is the run's own temporary directory (bound at
   ``/tmp/sandbox``). The network namespace has only a loopback device (no network). A seccomp filter
   (x86-64 and aarch64) refuses ``fork``, ``vfork``, ``clone3`` and every ``clone`` that does not create a
   thread, so no new process can start, whatever the code does (``ctypes``, a C extension, a patched
   interpreter), and ``socket`` and ``io_uring_setup``: a host's Unix sockets (``/run/docker.sock``) stay
   visible through the read-only bind, and connecting to one needs no write permission. ``--die-with-parent`` and the PID namespace end everything when the run ends.
2. **Inside the interpreter** (both modes): ``resource`` limits on CPU seconds, address space, file size
   (which also caps stdout and stderr, written to files) and processes, and a PEP 578 audit hook installed
   before the untrusted code runs. The hook refuses sockets, process creation, signals, ``ctypes``, writes
   outside the directory, opening directories (no ``dir_fd`` tricks), reading ``/proc``, and every way of
   reaching interpreter frames (``sys._getframe``, ``tb_frame``/``gi_frame`` attribute reads, trace and
   profile functions, signal handlers, ``gc`` walks) or the tests' code (audit hooks of its own, which
   would see it on ``exec``), so the harness's own state is out of the program's reach.

Without bubblewrap (macOS, a locked-down container) only layer 2 runs, as an unprivileged user
(``nobody``) when the library runs as root and the interpreter is readable by that user; a warning says
once that isolation is weaker. ``TESTTIME_SANDBOX=fallback`` forces this mode, ``=bwrap`` requires
bubblewrap.

**Proof of completion.** The parent writes a random token to the child's standard input; the harness reads
it before any untrusted code runs and writes it to a pipe the parent holds only after the program (or the
tests' ``check``) has returned normally, then ends with ``os._exit(0)``. A run passes only when the exit
status is 0 *and* the pipe holds exactly the token, so ``sys.exit(0)``, ``os._exit(0)``, ``raise
SystemExit(0)``, killing the parent or a crash never pass.

**Tests** (:func:`run_tests`): the solution runs first; the tests then run with a pristine copy of the
builtins (a solution that patches ``builtins.abs`` or ``isinstance`` does not change what the tests see),
in their own namespace built from ``context`` (HumanEval: the prompt, so a helper the tests call, such as
``encode_cyclic``, is the prompt's even when the solution redefines it), and the function under test is
wrapped so that a call whose result is not plain data (``int``, ``str``, ``list`` ... exactly, no
subclasses) fails: an object whose ``__eq__`` is always true cannot pass. Every module loaded before the
program (the tests' ``math``, ``random``, ``copy``, ``string`` among them), the classes they define and
their module-level objects (``random._inst``) are put back as they were after the program and after each
call of the function (an identity check of every saved value, about 1 ms, then a repair of what changed;
a thread still running then fails the run, since it could patch again what was put back),
and the hook refuses assigning ``__code__``, ``__defaults__``, ``__class__`` or ``__bases__``. The tests'
and the context's files are deleted before the program runs (it could read the asserted values), and
``hide`` makes chosen paths unreadable (an empty directory or ``/dev/null`` in their place under
bubblewrap; the audit hook refuses opening them in the fallback). Signal
handlers (which receive frames) cannot be set: ``signal`` and ``_signal`` cannot be imported.

What remains, honestly: the solution and the tests share one interpreter, so a solution can still change
state this does not watch (the contents of a module-level list or dict, a module imported after the
program started); the completion token is guarded by the audit hook, so bubblewrap alone (``audit_hook=
False``, a test setting) keeps files and network safe but not the token; the fallback's audit hook is not a
security boundary (C extensions call libc without audit events); under bubblewrap a fork bomb is
impossible but threads are allowed (bounded by the CPU and memory limits).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SandboxResult", "isolation_mode", "run_python", "run_tests"]

_INSIDE = "/tmp/sandbox"  # where the run's directory appears under bubblewrap

_GUARD = r"""
def _main():
    # Every builtin the harness uses, bound here before the program runs: a program that patches
    # builtins.len (say) must not change what the hook or the restore computes.
    import builtins as b

    (
        BaseException, Exception, FileNotFoundError, OSError, PermissionError, RuntimeError, TypeError,
        ValueError, all, any, bool, bytes, callable, compile, complex, dict, exec, float, frozenset,
        getattr, id, int, isinstance, len, list, map, object, open, set, str, tuple, type, zip
    ) = (
        b.BaseException, b.Exception, b.FileNotFoundError, b.OSError, b.PermissionError, b.RuntimeError,
        b.TypeError, b.ValueError, b.all, b.any, b.bool, b.bytes, b.callable, b.compile, b.complex, b.dict,
        b.exec, b.float, b.frozenset, b.getattr, b.id, b.int, b.isinstance, b.len, b.list, b.map, b.object,
        b.open, b.set, b.str, b.tuple, b.type, b.zip
    )
    del b
    import os, sys

    def make_hook():
        # Everything the hook needs is captured here, so the program cannot patch it through module globals.
        # Paths are resolved here with C functions only (os.lstat, os.readlink, os.stat): os.path.realpath
        # reads module globals (posixpath._joinrealpath) a program could replace before opening a file.
        lstat, readlink, stat, start = os.lstat, os.readlink, os.stat, os.getcwd()
        sep, kind_mask, link_kind, dir_kind = "/", 0o170000, 0o120000, 0o040000

        def realpath(path):
            parts = [p for p in (path if path.startswith(sep) else start + sep + path).split(sep) if p and p != "."]
            resolved, links = [], 0
            while parts:
                part = parts.pop(0)
                if part == "..":
                    if resolved:
                        resolved.pop()
                    continue
                candidate = sep + sep.join(resolved + [part])
                try:
                    mode = lstat(candidate).st_mode
                except OSError:
                    resolved.append(part)
                    continue
                if mode & kind_mask == link_kind:
                    links += 1
                    if links > 40:
                        raise OSError("too many symbolic links")
                    target = readlink(candidate)
                    if target.startswith(sep):
                        resolved = []
                    parts = [p for p in target.split(sep) if p and p != "."] + parts
                else:
                    resolved.append(part)
            return sep + sep.join(resolved)

        def isdir(path):
            try:
                return stat(path).st_mode & kind_mask == dir_kind
            except OSError:
                return False

        root = realpath(start)
        blocked = frozenset((
            "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
            "os.killpg", "os.startfile", "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect",
            "socket.bind", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname", "ctypes.dlopen",
            "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "os.chroot", "os.setuid", "os.setgid",
            "resource.setrlimit", "resource.prlimit", "os.putenv", "os.unsetenv", "urllib.Request",
            "webbrowser.open", "os.pidfd_open", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
            "sys._current_frames", "sys._getframe", "sys.settrace", "sys.setprofile",
            "function.__new__", "code.__new__", "os.chdir", "os.fchdir", "sys.addaudithook",
            "sys.monitoring.register_callback",
        ))
        path_events = frozenset((
            "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
            "os.truncate", "os.utime", "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr",
            "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
            "shutil.copytree", "shutil.chown",
        ))
        hidden = {hidden!r}
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        frame_attributes = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals"))
        blocked_modules = frozenset((
            "ctypes", "_ctypes", "multiprocessing", "_posixsubprocess", "pty", "signal", "_signal",
            "_testcapi", "_testinternalcapi", "_testmultiphase", "_xxsubinterpreters", "_xxinterpchannels",
        ))
        internals = frozenset(("__code__", "__defaults__", "__kwdefaults__", "__class__", "__bases__"))

        def resolve(path):
            # exactly str or bytes: a subclass, or a PathLike whose __fspath__ answers differently the
            # second time (when the file is really opened), could show the hook another path
            kind = type(path)
            if kind is bytes:
                path = path.decode("utf-8", "surrogateescape")
            elif kind is not str:
                return None
            try:
                return realpath(path)
            except BaseException:
                return None

        def inside(path):
            if type(path) is int:
                return True  # an already open descriptor
            real = resolve(path)
            return real is not None and (real == root or real.startswith(root + sep))

        def hook(event, args):
            if event in blocked:
                raise PermissionError("sandbox: " + event + " is not allowed")
            if event == "object.__getattr__" and len(args) > 1 and args[1] in frame_attributes:
                raise PermissionError("sandbox: reading " + str(args[1]) + " is not allowed")
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None, None))[:3]
                if path is None or type(path) is int:
                    return
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & write_flags
                )
                if writing and not inside(path):
                    raise PermissionError("sandbox: writing outside the sandbox directory is not allowed")
                real = resolve(path)
                if real is None:
                    raise PermissionError("sandbox: open() needs a plain str or bytes path")
                if real == "/proc" or real.startswith("/proc/"):
                    raise PermissionError("sandbox: reading /proc is not allowed")
                if any(real == h or real.startswith(h + sep) for h in hidden):
                    raise PermissionError("sandbox: reading " + real + " is not allowed")
                if isdir(real):
                    raise PermissionError("sandbox: opening a directory is not allowed")
            elif event in path_events:
                for arg in args:
                    if arg is None or type(arg) in (int, bool, tuple):  # modes, descriptors, times
                        continue
                    if not inside(arg):
                        raise PermissionError("sandbox: " + event + " outside the sandbox directory is not allowed")
            elif event == "import" and args and args[0] in blocked_modules:
                raise PermissionError("sandbox: importing " + str(args[0]) + " is not allowed")
            elif event in ("object.__setattr__", "object.__delattr__") and len(args) > 1:
                if args[1] in internals:
                    raise PermissionError("sandbox: changing " + str(args[1]) + " there is not allowed")

        return hook

    token = os.read(0, 128)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    channel = int(sys.argv[1])
    write, exit_now = os.write, os._exit
    import builtins, resource

    def limit(kind, soft, hard):
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError):
            pass

    limit(resource.RLIMIT_CPU, {cpu}, {cpu} + 1)
    limit(resource.RLIMIT_AS, {memory}, {memory})
    limit(resource.RLIMIT_FSIZE, {fsize}, {fsize})
    limit(resource.RLIMIT_NPROC, {nproc}, {nproc})
    limit(resource.RLIMIT_CORE, 0, 0)
    with open("program.py", encoding="utf-8") as handle:
        program = compile(handle.read(), "program.py", "exec")
    tests = None
    if {with_tests}:
        with open("tests.py", encoding="utf-8") as handle:
            tests = compile(handle.read(), "tests.py", "exec")
    context = None
    if {with_context}:
        with open("context.py", encoding="utf-8") as handle:
            context = compile(handle.read(), "context.py", "exec")
    for name in ("tests.py", "context.py"):  # the program must not read the tests (and copy their answers)
        try:
            os.remove(name)
        except FileNotFoundError:
            pass
    # modules that look at their caller's frame while being imported, and those tests import, before the hook
    import collections, copy, functools, itertools, math, random, re, string, typing  # noqa: F401, E401
    # signal handlers receive frames (the harness's among them): no handler can be set from here on
    sys.modules.pop("_signal", None)
    sys.modules.pop("signal", None)
    pristine = dict(builtins.__dict__)
    # Every module loaded so far, the classes and objects they hold, as they are now: after the program and
    # after each call of the function the tests see these values again, whatever the program patched.
    from itertools import repeat
    from operator import is_
    missing, set_attribute, delete_attribute, module_type = object(), type.__setattr__, type.__delattr__, type(sys)
    watched, seen = [], set()

    def watch(mapping, owner):
        key = id(mapping) if owner is None else id(owner)
        if key not in seen:
            seen.add(key)
            watched.append((mapping, owner, tuple(mapping), tuple(mapping.values())))

    type_of = type
    registry = sys.modules
    watch(registry, None)  # a module replaced there (sys.modules["math"] = fake) is put back too
    for module in list(sys.modules.values()):
        if type_of(getattr(module, "__dict__", None)) is dict:
            watch(module.__dict__, None)
            for value in list(module.__dict__.values()):
                try:
                    if isinstance(value, type):
                        watch(value.__dict__, value)
                    elif type_of(getattr(value, "__dict__", None)) is dict and not callable(value):
                        watch(value.__dict__, None)  # a module-level instance such as random._inst
                except Exception:
                    pass

    # the quick check, all in C: every mapping's length and every saved value, by identity
    mappings, lengths = [w[0] for w in watched], [len(w[2]) for w in watched]
    flat = {{dict: ([], [], []), type_of(type.__dict__): ([], [], [])}}
    for mapping, _, keys, values in watched:
        maps, flat_keys, flat_values = flat[type_of(mapping)]
        maps.extend([mapping] * len(keys))
        flat_keys.extend(keys)
        flat_values.extend(values)
    checks = [(kind.get, *columns) for kind, columns in flat.items()]

    def unchanged():
        if list(map(len, mappings)) != lengths:
            return False
        for get, maps, keys, values in checks:
            if not all(map(is_, map(get, maps, keys, repeat(missing)), values)):
                return False
        return True

    from _thread import _count as running_threads

    def restore():
        if running_threads():  # a thread could patch again what was just put back
            raise RuntimeError("sandbox: the solution left threads running")
        if unchanged():
            return
        for mapping, owner, keys, values in watched:
            if len(mapping) == len(keys) and all(map(is_, map(mapping.get, keys, repeat(missing)), values)):
                continue
            old = dict(zip(keys, values))
            # a submodule imported since (encodings.idna) stays: import does not bind it again; in
            # sys.modules nothing added stays (the next import loads it afresh)
            strict = mapping is registry
            for key in [k for k in mapping if k not in old and (strict or type_of(mapping[k]) is not module_type)]:
                try:
                    delete_attribute(owner, key) if owner is not None else mapping.pop(key)
                except BaseException:
                    pass
            for key, value in old.items():
                if mapping.get(key, missing) is not value:
                    try:
                        set_attribute(owner, key, value) if owner is not None else mapping.__setitem__(key, value)
                    except BaseException:
                        pass

    plain_types = (int, float, complex, bool, str, bytes, type(None), list, tuple, dict, set, frozenset)

    def plain(value, budget):
        budget[0] -= 1
        if budget[0] < 0:
            return True  # checked enough of a huge result
        kind = type_of(value)
        if kind not in plain_types:
            return False
        if kind is dict:
            return all(plain(k, budget) and plain(v, budget) for k, v in value.items())
        if kind in (list, tuple, set, frozenset):
            return all(plain(v, budget) for v in value)
        return True

    sys.addaudithook(make_hook())
    namespace = {{"__name__": "__main__", "__builtins__": builtins}}
    exec(program, namespace)
    if tests is not None:
        candidate = namespace[{entry!r}]
        restore()

        def checked(*args, **kwargs):
            try:
                result = candidate(*args, **kwargs)
            finally:
                restore()
            if not plain(result, [1000000]):
                raise TypeError("sandbox: the function returned " + type_of(result).__name__ + ", not plain data")
            return result

        if context is None:
            test_namespace = dict(namespace)
        else:  # the tests' helpers come from the context (the prompt), not from the solution
            test_namespace = {{"__name__": "__main__"}}
        test_namespace["__builtins__"] = pristine
        if context is not None:
            exec(context, test_namespace)
            test_namespace[{entry!r}] = checked  # tests may call the function by its name
        exec(tests, test_namespace)
        test_namespace["check"](checked)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    write(channel, token)
    exit_now(0)


globals().pop("_main")()  # the guard module keeps no names the program could reach
"""


@dataclass(frozen=True, kw_only=True)
class SandboxResult:
    """What a sandboxed run did.

    Attributes:
        status: ``"passed"`` (exit 0 and the completion token), ``"failed"`` (anything else: an assertion,
            an exception, an early exit), ``"timeout"`` (CPU or wall-clock limit), ``"memory"``
            (MemoryError), ``"output_limit"`` (wrote too much).
        returncode: the exit status (negative: killed by that signal).
        stdout: the first ``max_output_bytes`` of standard output.
        stderr: the first ``max_output_bytes`` of standard error.
        seconds: wall-clock time.
        completed: whether the harness proved the program (and the tests) ran to the end.
        isolation: ``"bwrap"`` or ``"fallback"``.
    """

    status: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    completed: bool = False
    isolation: str = "fallback"


# -- the seccomp filter (no new processes) -----------------------------------------------------------------
_CLONE_THREAD = 0x00010000
_RET_ALLOW, _RET_KILL = 0x7FFF0000, 0x80000000
_RET_EPERM, _RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 38


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program refusing new processes (threads stay allowed) and sockets, or None on
    other CPUs.

    ``fork`` / ``vfork``, ``socket``, ``io_uring_setup`` and ``clone`` without ``CLONE_THREAD`` fail with
    EPERM; ``clone3`` fails with
    ENOSYS (its flags sit behind a pointer a filter cannot read; the C library then falls back to
    ``clone``); another architecture's system calls (x32 on x86-64) kill the process.
    """
    machine = (machine or platform.machine()).lower()
    # refused with EPERM: fork and vfork (x86-64 only), socket (a host's Unix sockets, /run/docker.sock or
    # /run/postgresql/..., stay reachable through the read-only bind), io_uring_setup (it can open sockets)
    if machine in ("x86_64", "amd64"):
        arch, forks, clone, clone3, x32 = 0xC000003E, (57, 58, 41, 425), 56, 435, True
    elif machine in ("aarch64", "arm64"):
        arch, forks, clone, clone3, x32 = 0xC00000B7, (198, 425), 220, 435, False
    else:
        return None
    # (code, jump_if_true_label, jump_if_false_label, k); labels are resolved to relative offsets below.
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog: list[tuple[int, object, object, int]] = [(ld, None, None, 4), (jeq, None, "kill", arch)]
    prog.append((ld, None, None, 0))
    if x32:
        prog.append((jge, "kill", None, 0x40000000))
    prog += [(jeq, "eperm", None, nr) for nr in forks]
    prog += [(jeq, "enosys", None, clone3), (jeq, None, "allow", clone), (ld, None, None, 16)]
    prog.append((jset, "allow", "eperm", _CLONE_THREAD))
    labels = {"allow": len(prog), "eperm": len(prog) + 1, "enosys": len(prog) + 2, "kill": len(prog) + 3}
    prog += [(ret, None, None, _RET_ALLOW), (ret, None, None, _RET_EPERM)]
    prog += [(ret, None, None, _RET_ENOSYS), (ret, None, None, _RET_KILL)]
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        t = 0 if jt is None else labels[str(jt)] - i - 1
        f = 0 if jf is None else labels[str(jf)] - i - 1
        out += struct.pack("=HBBI", code, t, f, k)
    return bytes(out)


def _bwrap_args(workdir: str, seccomp_fd: int | None, hidden: tuple[str, ...] = ()) -> list[str]:
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in hidden:  # an empty directory, or an empty file, in its place
        args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    args += ["--bind", workdir, _INSIDE, "--chdir", _INSIDE, "--unshare-all", "--die-with-parent"]
    args += ["--new-session", "--cap-drop", "ALL"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args


@functools.lru_cache(maxsize=1)
def _bwrap_works() -> bool:
    """Whether bubblewrap is installed and can start an interpreter here (probed once per process)."""
    if sys.platform != "linux" or shutil.which("bwrap") is None:
        return False
    try:
        result = _spawn("pass", isolation="bwrap", cpu_seconds=5, wall_seconds=20.0, memory_mb=1024)
    except OSError:
        return False
    return result.status == "passed"


@functools.lru_cache(maxsize=1)
def _nobody_works() -> bool:
    """Whether the fallback can run the interpreter as ``nobody`` (only tried when running as root)."""
    if os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", "pass"],
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


_warned = False


def isolation_mode() -> str:
    """``"bwrap"`` or ``"fallback"``: what :func:`run_python` uses here (``TESTTIME_SANDBOX`` overrides).

    Raises:
        RuntimeError: ``TESTTIME_SANDBOX=bwrap`` but bubblewrap does not work here.
    """
    global _warned
    wanted = os.environ.get("TESTTIME_SANDBOX", "auto").strip().lower()
    if wanted == "fallback":
        return "fallback"
    if _bwrap_works():
        return "bwrap"
    if wanted == "bwrap":
        raise RuntimeError("TESTTIME_SANDBOX=bwrap but bubblewrap (bwrap) is missing or does not work here")
    if not _warned:
        _warned = True
        warnings.warn(
            "bubblewrap (bwrap) is not available: model-written code runs with resource limits and an audit "
            "hook only, which is weaker isolation (install the 'bubblewrap' package)",
            RuntimeWarning,
            stacklevel=3,
        )
    return "fallback"


def run_python(
    source: str,
    *,
    cpu_seconds: int = 5,
    wall_seconds: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1_000_000,
    isolation: str | None = None,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run a Python program in the sandbox (see the module docstring); it passes when it runs to the end.

    Args:
        source: the program (run as ``__main__``).
        cpu_seconds: CPU-time limit.
        wall_seconds: wall-clock limit (sleeping programs use no CPU).
        memory_mb: address-space limit.
        max_output_bytes: limit on each output stream and on any file the program writes.
        isolation: ``"bwrap"``, ``"fallback"`` or None (:func:`isolation_mode`).
        audit_hook: install the audit hook (tests turn it off to check the kernel layer alone).

    Returns:
        A :class:`SandboxResult`.
    """
    return _spawn(
        source,
        isolation=isolation or isolation_mode(),
        cpu_seconds=cpu_seconds,
        wall_seconds=wall_seconds,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        audit_hook=audit_hook,
    )


def run_tests(
    solution: str,
    tests: str,
    entry_point: str,
    *,
    cpu_seconds: int = 5,
    wall_seconds: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1_000_000,
    isolation: str | None = None,
    context: str | None = None,
    hide: Sequence[str] = (),
) -> SandboxResult:
    """Run a solution, then tests defining ``check(candidate)``, and call ``check(solution[entry_point])``.

    The tests see pristine builtins, the standard modules as they were before the solution ran, and a
    wrapped candidate whose results must be plain data (module docstring). Passed means ``check``
    returned.

    Args:
        solution: the solution's source (e.g. HumanEval's prompt plus the completion).
        tests: source defining ``check(candidate)``.
        entry_point: the name of the function under test.
        cpu_seconds: CPU-time limit.
        wall_seconds: wall-clock limit.
        memory_mb: address-space limit.
        max_output_bytes: limit on each output stream.
        isolation: as for :func:`run_python`.
        context: source run in the tests' own namespace before them (HumanEval: the prompt, so helpers
            it defines, such as ``encode_cyclic``, are the prompt's and not the solution's); None: the
            tests see a copy of the solution's names.
        hide: files or directories the program must not read (HumanEval: the bundled data set, which
            holds the canonical solutions): under bubblewrap an empty directory or file takes their place;
            in the fallback the audit hook refuses opening them.

    Returns:
        A :class:`SandboxResult`.
    """
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python name, got {entry_point!r}")
    return _spawn(
        solution,
        tests=tests,
        entry_point=entry_point,
        context=context,
        hide=hide,
        isolation=isolation or isolation_mode(),
        cpu_seconds=cpu_seconds,
        wall_seconds=wall_seconds,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
    )


def _spawn(
    source: str,
    *,
    isolation: str,
    tests: str | None = None,
    entry_point: str = "",
    context: str | None = None,
    hide: Sequence[str] = (),
    cpu_seconds: int = 5,
    wall_seconds: float = 10.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 1_000_000,
    audit_hook: bool = True,
) -> SandboxResult:
    if sys.platform == "win32":  # pragma: no cover
        raise RuntimeError("the sandbox needs a POSIX system (resource limits)")
    if isolation not in ("bwrap", "fallback"):
        raise ValueError(f"isolation must be 'bwrap' or 'fallback', got {isolation!r}")
    as_nobody = isolation == "fallback" and _nobody_works()
    hidden_paths = tuple(sorted({os.path.realpath(p) for p in hide if os.path.exists(p)}))
    if any(p == "/" or "\n" in p for p in hidden_paths):
        raise ValueError("hide: cannot hide / or a path with a newline")
    workdir = tempfile.mkdtemp(prefix="testtime-sandbox-")
    token = secrets.token_hex(24).encode()
    read_end, write_end = os.pipe()
    seccomp_read = -1
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8", errors="replace") as handle:
            handle.write(source)
        for name, text in (("tests.py", tests), ("context.py", context)):
            if text is not None:
                with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="replace") as handle:
                    handle.write(text)
        guard = _GUARD.format(
            cpu=int(cpu_seconds),
            memory=int(memory_mb) << 20,
            fsize=int(max_output_bytes),
            nproc=256 if as_nobody else 4096,
            with_tests=tests is not None,
            with_context=tests is not None and context is not None,
            entry=entry_point,
            hidden=hidden_paths,
        )
        if not audit_hook:
            guard = guard.replace("    sys.addaudithook(make_hook())\n", "")
        with open(os.path.join(workdir, "guard.py"), "w", encoding="utf-8") as handle:
            handle.write(guard)
        inner = _INSIDE if isolation == "bwrap" else workdir
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "HOME": inner,
            "TMPDIR": inner,
        }
        command = [sys.executable, "-I", "-B", "guard.py", str(write_end)]
        pass_fds = [write_end]
        extra: dict = {}
        if isolation == "bwrap":
            program = seccomp_filter()
            if program is not None:
                seccomp_read, seccomp_write = os.pipe()
                os.write(seccomp_write, program)
                os.close(seccomp_write)
                pass_fds.append(seccomp_read)
            seccomp_fd = seccomp_read if program is not None else None
            command = [*_bwrap_args(workdir, seccomp_fd, hidden_paths), "--", *command]
        elif as_nobody:
            os.chown(workdir, 65534, 65534)
            extra = {"user": 65534, "group": 65534, "extra_groups": []}
        start = time.perf_counter()
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        with open(out_path, "w+b") as out, open(err_path, "w+b") as err:
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                pass_fds=pass_fds,
                start_new_session=True,
                **extra,
            )
            os.close(write_end)
            write_end = -1
            if seccomp_read >= 0:
                os.close(seccomp_read)
                seccomp_read = -1
            assert process.stdin is not None
            with contextlib.suppress(OSError):
                process.stdin.write(token)
                process.stdin.close()
            timed_out = False
            try:
                process.wait(timeout=wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            seconds = time.perf_counter() - start
            # read through the descriptors opened here: the program may have put a FIFO or a symlink
            # in the files' places
            stdout, stderr = _read_head(out, max_output_bytes), _read_head(err, max_output_bytes)
        received = _drain(read_end, 4 * len(token))
        completed = received == token
        code = process.returncode
        if isolation == "bwrap" and code > 128:  # bubblewrap reports a child killed by signal N as 128 + N
            code = 128 - code
        if timed_out or code in (-signal.SIGXCPU, -signal.SIGKILL):
            status = "timeout"
        elif code == -signal.SIGXFSZ or "File too large" in stderr[-2000:]:  # Python ignores SIGXFSZ
            status = "output_limit"
        elif code == 0 and completed:
            status = "passed"
        elif "MemoryError" in stderr[-2000:]:
            status = "memory"
        else:
            status = "failed"
        return SandboxResult(
            status=status,
            returncode=code,
            stdout=stdout,
            stderr=stderr,
            seconds=seconds,
            completed=completed,
            isolation=isolation,
        )
    finally:
        for fd in (read_end, write_end, seccomp_read):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _drain(fd: int, limit: int) -> bytes:
    """What the harness wrote on the completion pipe (at most ``limit`` bytes; never blocks)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    return data


def _read_head(handle: typing.BinaryIO, limit: int) -> str:
    try:
        handle.seek(0)
        return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""
