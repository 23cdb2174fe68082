"""The code sandbox: escape attempts leave nothing outside it, early exits never pass, limits hold.

Each escape attempt runs three ways where bubblewrap works: bubblewrap with the audit hook (the default),
bubblewrap alone (the kernel layer without the hook), and the fallback with the hook. Afterwards the test
looks at the file system itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sysconfig
import threading
import time
import uuid
from pathlib import Path

import pytest

from testtime.tasks.sandbox import _bwrap_works, run_python, run_tests, seccomp_filter

LIMITS = {"cpu_seconds": 2, "wall_seconds": 6.0, "memory_mb": 512, "max_output_bytes": 100_000}
BWRAP = _bwrap_works()
MODES = [("bwrap", True), ("bwrap", False), ("fallback", True)] if BWRAP else [("fallback", True)]
ESCAPES = {
    "open": "open({path!r}, 'w').write('x')",
    "os.open dir_fd": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\nos.close(os.open({name!r}, os.O_CREAT | os.O_WRONLY, dir_fd=fd))",
    "mkdir dir_fd": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\nos.mkdir({name!r}, dir_fd=fd)",
    "opener": "import os\nfd = os.open({dir!r}, os.O_RDONLY)\nopen({name!r}, 'w', opener=lambda p, f: os.open(p, f, dir_fd=fd)).write('x')",
    "symlink": "import os\nos.symlink({dir!r}, 'link')\nopen('link/' + {name!r}, 'w').write('x')",
    "traceback closure patch": (
        "try:\n    open({path!r}, 'w')\nexcept PermissionError as error:\n    tb = error.__traceback__\n"
        "    while tb.tb_next:\n        tb = tb.tb_next\n    frame = tb.tb_frame\n"
        "    for value in list(frame.f_locals.values()):\n"
        "        for cell in getattr(value, '__closure__', None) or ():\n"
        "            if isinstance(cell.cell_contents, str) and cell.cell_contents.startswith('/'):\n"
        "                cell.cell_contents = '/'\n"
        "open({path!r}, 'w').write('x')"
    ),
    "ctypes": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.open({path!r}.encode(), 0o101, 0o644)",
    "os.system": "import os\nos.system('touch ' + {path!r})",
    "subprocess": "import subprocess\nsubprocess.run(['touch', {path!r}])",
    "fork": "import os\nif os.fork() == 0:\n    open({path!r}, 'w').write('x')",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "pth in site-packages": "open({site!r} + '/' + {name!r} + '.pth', 'w').write('# sandbox test\\n')",
}


def _modes() -> list[tuple[str, bool]]:
    return MODES


@pytest.fixture
def targets(tmp_path: Path):  # noqa: ANN201
    """Directories outside the sandbox a hostile program aims at; yields (format fields, check function)."""
    name = f"escaped-{uuid.uuid4().hex[:8]}"
    site = sysconfig.get_paths()["purelib"]
    fields = {"dir": str(tmp_path), "path": str(tmp_path / name), "name": name, "site": site}

    def leftovers() -> list[str]:
        found = [str(p) for p in tmp_path.iterdir()]
        found += [str(p) for p in Path(site).glob(name + "*")]
        found += [str(p) for p in Path("/tmp").glob(name + "*")]
        found += [str(p) for p in Path.cwd().glob(name + "*")]
        return found

    yield fields, leftovers
    for path in Path(site).glob(name + "*"):  # only if a test failed: never leave a .pth behind
        path.unlink()


@pytest.mark.parametrize(("isolation", "hook"), _modes())
def test_escape_attempts_leave_nothing_outside(targets, isolation: str, hook: bool) -> None:  # noqa: ANN001
    fields, leftovers = targets
    for label, template in ESCAPES.items():
        source = template.format(**fields)
        start = time.perf_counter()
        run_python(source, isolation=isolation, audit_hook=hook, **LIMITS)
        assert time.perf_counter() - start < 10, label
        assert leftovers() == [], (label, isolation, hook)


@pytest.mark.parametrize(("isolation", "hook"), _modes())
def test_no_network(isolation: str, hook: bool) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set() and not accepted:
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        result = run_python(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')",
            isolation=isolation,
            audit_hook=hook,
            **LIMITS,
        )
    finally:
        done.set()
        thread.join(timeout=6)
        server.close()
    assert result.status == "failed" and not accepted


@pytest.mark.parametrize(("isolation", "hook"), _modes())
def test_early_exits_and_killing_the_parent_never_pass(isolation: str, hook: bool) -> None:
    wrong = "def f(x):\n    return 0\n"
    tests = "def check(candidate):\n    assert candidate(2) == 4\n"
    for exit_line in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit(0)"):
        assert run_python(exit_line, isolation=isolation, audit_hook=hook, **LIMITS).status == "failed"
        result = run_tests(wrong + exit_line + "\n", tests, "f", isolation=isolation, **LIMITS)
        assert result.status == "failed" and not result.completed, exit_line
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos._exit(0)"
    assert run_python(killer, isolation=isolation, audit_hook=hook, **LIMITS).status == "failed"
    assert run_tests(wrong, tests, "f", isolation=isolation, **LIMITS).status == "failed"
    assert (
        run_tests("def f(x):\n    return 2 * x\n", tests, "f", isolation=isolation, **LIMITS).status
        == "passed"
    )


def test_harness_patching_never_passes() -> None:
    tests = "def check(candidate):\n    assert candidate(2) == 4\n"
    hacks = {
        "always equal": "class E:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return E()\n",
        "int subclass": "class E(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return E(0)\n",
        "patched builtins": "import builtins\nbuiltins.AssertionError = None\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0\n",
        "swallowed tests": "def f(x):\n    return 0\nx = '''",
        "trace function": (
            "import sys, os\ndef t(frame, event, arg):\n    token = frame.f_locals.get('token')\n"
            "    if token:\n        os.write(int(sys.argv[1]), token)\n        os._exit(0)\n    return t\n"
            "sys.settrace(t)\ndef f(x):\n    return 0\n"
        ),
        "frame walk": (
            "import sys, os\nframe = sys._getframe()\nwhile frame:\n    if 'token' in frame.f_locals:\n"
            "        os.write(int(sys.argv[1]), frame.f_locals['token'])\n        os._exit(0)\n"
            "    frame = frame.f_back\n"
        ),
        "generator frame walk": (
            "import sys, os\ndef g():\n    yield\nframe = g().gi_frame\nwhile frame:\n"
            "    if 'token' in frame.f_locals:\n        os.write(int(sys.argv[1]), frame.f_locals['token'])\n"
            "        os._exit(0)\n    frame = frame.f_back\n"
        ),
        "patched builtins.len, then a frame walk": (
            "import builtins, os, sys\nbuiltins.len = lambda x: 0\ntry:\n    raise ValueError\n"
            "except ValueError as error:\n    frame = error.__traceback__.tb_frame\nwhile frame is not None:\n"
            "    if 'token' in frame.f_locals:\n        os.write(int(sys.argv[1]), frame.f_locals['token'])\n"
            "        os._exit(0)\n    frame = frame.f_back\ndef f(x):\n    return 0\n"
        ),
        "fake token": "import os, sys\nos.write(int(sys.argv[1]), b'0' * 48)\nos._exit(0)\n",
        "guard globals": "import __main__\n__main__._main\n",
        "a thread left running (it could patch again what the harness restores)": (
            "import builtins, threading\ndef spin():\n    while True:\n        builtins.AssertionError = None\n"
            "threading.Thread(target=spin, daemon=True).start()\ndef f(x):\n    return 4\n"
        ),
    }
    for label, source in hacks.items():
        result = run_tests(source, tests, "f", **LIMITS)
        assert result.status != "passed" and not result.completed, label


@pytest.mark.parametrize("isolation", ["bwrap", "fallback"] if BWRAP else ["fallback"])
def test_limits_hold(isolation: str) -> None:
    quick = {**LIMITS, "cpu_seconds": 1, "wall_seconds": 1.5}
    for source in ("while True:\n    pass\n", "import time\ntime.sleep(60)\n"):
        start = time.perf_counter()
        assert run_python(source, isolation=isolation, **quick).status == "timeout"
        assert time.perf_counter() - start < 5
    assert run_python("x = bytearray(8 * 1024**3)\n", isolation=isolation, **LIMITS).status == "memory"
    flood = run_python("print('y' * 10_000_000)\n", isolation=isolation, **LIMITS)
    assert flood.status == "output_limit" and len(flood.stdout) <= LIMITS["max_output_bytes"]
    inside = run_python(
        "open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())", isolation=isolation
    )
    assert inside.status == "passed" and inside.stdout == "ok\n" and inside.completed
    threads = "import threading\nt = threading.Thread(target=print, args=('t',))\nt.start()\nt.join()\n"
    assert run_python(threads, isolation=isolation, **LIMITS).status == "passed"


def test_seccomp_program_by_hand() -> None:
    """The filter's instructions, decoded by hand for x86-64 (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k)."""
    import struct

    program = seccomp_filter("x86_64")
    assert program is not None
    rows = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    assert rows[0] == (0x20, 0, 0, 4)  # load the architecture
    assert (
        rows[1][0] == 0x15
        and rows[1][3] == 0xC000003E
        and rows[1 + 1 + rows[1][2]] == (0x06, 0, 0, 0x80000000)
    )
    returns = {k for code, _, _, k in rows if code == 0x06}
    assert returns == {0x7FFF0000, 0x00050001, 0x00050026, 0x80000000}
    assert seccomp_filter("riscv64") is None


@pytest.mark.skipif(not BWRAP or os.geteuid() != 0, reason="needs bubblewrap")
def test_kernel_layer_refuses_processes_without_the_hook() -> None:
    result = run_python("import os\nos.fork()\n", isolation="bwrap", audit_hook=False, **LIMITS)
    assert result.status == "failed" and "Operation not permitted" in result.stderr


def test_signal_handlers_and_replaced_output_files_never_pass() -> None:
    """A signal handler receives frames (the harness's token among them); a FIFO in the output file's place
    would block a reader that opens it by name."""
    tests = "def check(candidate):\n    assert candidate(2) == 4\n"
    frame_walk = (
        "import signal, os, sys\ndef h(signum, frame):\n    while frame is not None:\n"
        "        if 'token' in frame.f_locals:\n            os.write(int(sys.argv[1]), frame.f_locals['token'])\n"
        "            os._exit(0)\n        frame = frame.f_back\nsignal.signal(signal.SIGALRM, h)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.05)\ndef f(x):\n    while True:\n        pass\n"
    )
    hacks = {
        "signal handler frame walk": frame_walk,
        "_signal": frame_walk.replace("import signal", "import _signal as signal"),
        "fifo stdout": "import os\nos.remove('.stdout')\nos.mkfifo('.stdout')\ndef f(x):\n    return 0\n",
        "fifo stderr": "import os\nos.remove('.stderr')\nos.mkfifo('.stderr')\ndef f(x):\n    return 0\n",
        "symlinked stderr": "import os\nos.remove('.stderr')\nos.symlink('/etc/passwd', '.stderr')\nraise ValueError\n",
    }
    for isolation in ["bwrap", "fallback"] if BWRAP else ["fallback"]:
        for label, source in hacks.items():
            start = time.perf_counter()
            result = run_tests(source, tests, "f", isolation=isolation, **LIMITS)
            assert time.perf_counter() - start < 10, label
            assert result.status != "passed" and not result.completed, label
            assert "root:" not in result.stderr, label


@pytest.mark.parametrize(("isolation", "hook"), _modes())
def test_no_host_unix_socket(isolation: str, hook: bool) -> None:
    """A Unix socket on the host (a daemon's, outside /tmp) never receives a connection."""
    base = Path("/var/tmp")
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip("needs a writable /var/tmp")
    path = base / f"testtime-{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    path.chmod(0o777)
    server.listen(1)
    server.settimeout(0.2)
    try:
        program = (
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\ns.sendall(b'x')\n"
        )
        result = run_python(program, isolation=isolation, audit_hook=hook, **LIMITS)
        with pytest.raises(OSError):
            server.accept()
        assert result.status == "failed"
    finally:
        server.close()
        path.unlink()


@pytest.mark.parametrize("isolation", ["bwrap", "fallback"] if BWRAP else ["fallback"])
def test_hidden_paths_cannot_be_read(isolation: str) -> None:
    base = Path("/var/tmp")
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip("needs a writable /var/tmp")
    secret = base / f"testtime-hidden-{uuid.uuid4().hex[:8]}"
    secret.mkdir()
    try:
        (secret / "answers.txt").write_text("42")
        secret.chmod(0o755)
        (secret / "answers.txt").chmod(0o644)
        tests = "def check(candidate):\n    assert candidate() == '42'\n"
        solution = f"def f():\n    return open({str(secret / 'answers.txt')!r}).read()\n"
        assert run_tests(solution, tests, "f", isolation=isolation, **LIMITS).status == "passed"  # not hidden
        hidden = run_tests(solution, tests, "f", isolation=isolation, hide=[str(secret)], **LIMITS)
        assert hidden.status == "failed" and "42" not in hidden.stdout
    finally:
        (secret / "answers.txt").unlink()
        secret.rmdir()


def test_ordinary_solutions_still_pass_the_restore() -> None:
    """What the harness puts back after each call must not break honest code: a submodule imported on
    every call, a joined thread, attributes on the solution's own classes, a module-level cache."""
    tests = "def check(candidate):\n    for i in range(3):\n        assert candidate(i) == i\n"
    solutions = {
        "submodule import": "def f(x):\n    import encodings.idna\n    return x if encodings.idna.ToASCII('a') else -1\n",
        "joined thread": (
            "import threading\ndef f(x):\n    out = []\n    t = threading.Thread(target=out.append, args=(x,))\n"
            "    t.start()\n    t.join()\n    return out[0]\n"
        ),
        "own class": "class C:\n    pass\ndef f(x):\n    C.value = x\n    return C.value\n",
        "cache": "import functools\n@functools.lru_cache(maxsize=None)\ndef f(x):\n    return x\n",
    }
    for label, source in solutions.items():
        result = run_tests(source, tests, "f", **LIMITS)
        assert result.status == "passed", (label, result.stderr[-300:])


@pytest.mark.parametrize("isolation", ["bwrap", "fallback"] if BWRAP else ["fallback"])
def test_the_hook_resolves_paths_itself(isolation: str) -> None:
    """A world-writable directory outside: in the fallback only the hook stands between the program and it,
    and the hook must not trust os.path.realpath (module globals the program can replace) or a str
    subclass (methods the program defines)."""
    base = Path("/var/tmp")
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip("needs a writable /var/tmp")
    target = base / f"testtime-escaped-{uuid.uuid4().hex[:8]}"
    programs = {
        "patched realpath": (
            "import os, posixpath\nroot = os.getcwd()\n"
            "posixpath._joinrealpath = lambda path, rest, strict, seen: (root + '/ok.txt', True)\n"
            f"open({str(target)!r}, 'w').write('x')\n"
        ),
        "str subclass": (
            "class S(str):\n    def startswith(self, *args):\n        return True\n"
            f"open(S({str(target)!r}), 'w').write('x')\n"
        ),
    }
    try:
        for label, source in programs.items():
            result = run_python(source, isolation=isolation, **LIMITS)
            assert result.status == "failed" and not target.exists(), label
    finally:
        if target.exists():
            target.unlink()
