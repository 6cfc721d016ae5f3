"""A warm worker for pipeline stages: the heavy imports are paid once, not per stage.

`dvc repro` runs every stage as a new process, and importing torch, mlflow (with
its sqlite store), scikit-learn and matplotlib costs ~5 s of a ~6 s stage here:
31 stages spent most of their time importing. Under DVC (``DVC_STAGE`` set), the
``linflow`` command therefore hands its stage to a worker that already imported
them: the worker forks a child per stage, which takes over the client's stdin,
stdout and stderr (passed over a Unix socket), cwd, environment and argv, and
runs ``linflow.cli.main`` exactly as the process would have. The child imports
linflow itself fresh from disk, so edited code is always what runs; only
third-party modules are preloaded. Outputs are byte-identical either way (tested).

- The second stage of a run (of one parent process: one `dvc repro`) starts the
  worker in the background and runs locally; the first only notes its parent, so a
  repro of one stage starts no worker that would run nothing. The worker imports
  in three groups (what prepare needs, torch, mlflow + matplotlib) and serves after
  each, so stages never wait for it (see serve()). It removes its log when it
  exits, unless the log recorded a problem.
- Ctrl-C, SIGTERM and SIGHUP sent to the client are forwarded to the child (a run
  ends KILLED as usual); if the client dies, the child gets SIGTERM. The client
  exits with the child's status, re-raising its signal if it died of one.
- One worker per interpreter, installed packages and environment (a different
  value of any variable, say OMP_NUM_THREADS, gets its own); the socket lives in
  a 0700 folder of this user, and the worker serves only this uid.
- The worker exits after ``LINFLOW_PRELOAD_IDLE`` seconds (default 60) without
  work. ``LINFLOW_PRELOAD=0`` switches it off, ``=1`` also uses it outside DVC.

Nothing here is imported by a stage's code; cli.py does not know about it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time

# Imported by the worker, group by group (it serves after each): the first is what
# prepare needs, the next what train/evaluate/reference/compare need.
GROUPS = (
    (
        "numpy",
        "yaml",
        "pydantic",
        "safetensors.numpy",
        "threadpoolctl",
        "scipy.optimize",
        "sklearn.linear_model",
        "sklearn.datasets",
        "sklearn.exceptions",
    ),
    ("torch", "torch.nn", "torch.optim", "torch._dynamo"),  # optim imports dynamo at step 1
    (
        "mlflow",
        "mlflow.entities",
        "mlflow.tracking",
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.tracking.rest_store",
        "matplotlib",
        "matplotlib.pyplot",
    ),
)
# Environment variables that differ between stages of one run and are read only
# when used: they do not need a worker of their own.
_VOLATILE = ("PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST", "COLUMNS", "LINES")
_FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_HEADER = struct.Struct("!I")


def wanted(argv: list[str]) -> bool:
    """Whether this `linflow` invocation should go through the worker."""
    setting = os.environ.get("LINFLOW_PRELOAD", "")
    if setting == "0" or os.name != "posix":
        return False
    if setting != "1" and "DVC_STAGE" not in os.environ:
        return False
    from linflow.stages import PIPELINE

    stages = set(PIPELINE)
    if {"-h", "--help"} & set(argv):
        return False
    rest = iter(argv)
    for arg in rest:  # the subcommand: the first word that is not a global option
        if arg == "--params":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg in stages
    return False


def _key() -> str:
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.prefix}\0{sys.version}\0".encode())
    import site

    for d in [*site.getsitepackages(), os.path.dirname(os.path.abspath(__file__))]:
        with contextlib.suppress(OSError):
            h.update(f"{d}\0{os.stat(d).st_mtime_ns}\0".encode())
    with contextlib.suppress(OSError):
        st = os.stat(__file__)
        h.update(f"{st.st_mtime_ns}\0{st.st_size}\0".encode())
    for k in sorted(os.environ):
        if k in _VOLATILE or k.startswith(("DVC_", "LINFLOW_PRELOAD")):
            continue
        h.update(f"{k}={os.environ[k]}\0".encode())
    return h.hexdigest()[:20]


def _folder() -> str | None:
    """This user's private folder for worker sockets, or None when it is not private."""
    base = os.environ.get("LINFLOW_PRELOAD_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"linflow-preload-{os.getuid()}"
    )
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        st = os.lstat(base)
    except OSError:
        return None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        _warn_once(
            base,
            f"linflow: the warm worker is off: {base} is not a private folder of this user "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); every stage pays its "
            "imports (~5 s). Remove it, or set LINFLOW_PRELOAD_DIR to a folder of your own.",
        )
        return None
    return base


def _warn_once(base: str, message: str) -> None:
    """Print `message` once per parent process (one `dvc repro`), not once per stage."""
    marker = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "linflow"
    )
    key = f"{os.getppid()}:{base}"
    path = os.path.join(marker, "preload-warned")
    with contextlib.suppress(OSError), open(path) as fh:
        if fh.read() == key:
            return
    print(message, file=sys.stderr)
    with contextlib.suppress(OSError):
        os.makedirs(marker, mode=0o700, exist_ok=True)
        with open(path, "w") as fh:
            fh.write(key)


def _paths() -> tuple[str, str, str] | None:
    folder = _folder()
    if folder is None:
        return None
    stem = os.path.join(folder, _key())
    return stem + ".sock", stem + ".lock", stem + ".log"


# --- client ---------------------------------------------------------------------


def run(argv: list[str]) -> int | None:
    """Run `linflow argv` in the worker; None when there is none ready (run it here)."""
    paths = _paths()
    if paths is None:
        return None
    sock_path, lock_path, log_path = paths
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sock_path)
    except OSError:
        sock.close()
        blocked = _blocked(sock_path, lock_path)
        if blocked:
            _warn_once(
                blocked,
                f"linflow: the warm worker is off: {blocked} is a folder where its "
                f"{'socket' if blocked == sock_path else 'lock file'} should be; every stage "
                f"pays its imports (~5 s). Remove it (rm -r {blocked}), or set "
                "LINFLOW_PRELOAD_DIR to a folder of your own.",
            )
            return None
        if _second_stage(sock_path):
            _start_worker(lock_path, log_path)
        return None
    request = json.dumps(
        {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path}
    ).encode()
    try:
        socket.send_fds(sock, [_HEADER.pack(len(request)) + request], [0, 1, 2])
        reply = sock.makefile("rb")
        first = reply.readline().split()
    except OSError:
        first = []
    if len(first) != 2 or first[0] != b"PID":
        sock.close()  # the worker is going away: this stage runs here
        return None
    pid = int(first[1])

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in _FORWARD:
        signal.signal(sig, forward)
    try:
        last = reply.readline().split()
    except OSError:
        last = []
    if len(last) != 2 or last[0] != b"EXIT":
        print("linflow: error: the preload worker went away during the stage", file=sys.stderr)
        return 1
    code = int(last[1])
    if code < 0:  # died of a signal: so do we, for whoever waits on us
        for sig in _FORWARD:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _blocked(*paths: str) -> str | None:
    """The first of the worker's paths that a folder occupies (the worker could neither
    bind its socket there nor open its lock; a file there it replaces), or None."""
    import stat

    for path in paths:
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return path
    return None


def _second_stage(sock_path: str) -> bool:
    """Whether this is at least the second stage its parent (one `dvc repro`) starts.

    The first stage of a run only notes its parent: a `dvc repro` that runs one
    stage (after editing one param, say) would leave a worker that imported
    everything and ran nothing. From the second stage on, a worker is worth it.
    """
    note = sock_path.removesuffix(".sock") + ".first"
    parent = str(os.getppid())
    with contextlib.suppress(OSError), open(note) as fh:
        if fh.read() == parent:
            return True
    with contextlib.suppress(OSError):
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(parent)
    return False


def _start_worker(lock_path: str, log_path: str) -> None:
    """Start a worker in the background unless one is already starting."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # a worker holds it: it is still importing
    os.close(fd)  # the worker takes the lock itself; a racing second one exits
    import subprocess

    try:
        with open(log_path, "wb") as log:  # the last worker's log only
            subprocess.Popen(
                [sys.executable, "-c", "import linflow.launch.worker as p; p.serve()"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                close_fds=True,
                start_new_session=True,
            )
    except OSError:
        return  # no worker: stages run in their own processes, as without one


# --- worker ---------------------------------------------------------------------


def serve() -> None:
    """Import the groups in turn and serve after each one.

    A server forked after a group serves at once with what is imported so far, while
    this process goes on importing; each newer server takes the socket over (bind to
    a temporary name, then rename onto the path) and stops the previous one, which
    finishes its stages and exits. Stages thus never wait for imports they do not
    need: prepare of a bundled dataset runs with scikit-learn loaded ~1.5 s after the
    first stage started the worker, long before torch and mlflow are in.
    """
    paths = _paths()
    if paths is None:
        return
    sock_path, lock_path, log_path = paths
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another worker won the race
    if "" in sys.path:
        sys.path.remove("")
    import importlib
    import logging

    t0 = time.perf_counter()
    previous = None
    for i, group in enumerate(GROUPS):
        for name in group:
            try:
                importlib.import_module(name)
            except Exception as exc:  # a missing optional piece costs only its import later
                print(f"preload: {name}: {exc}", flush=True)
        if "matplotlib" in sys.modules:
            import matplotlib

            matplotlib.use("Agg")
        logging.getLogger().handlers.clear()
        _quiet_exit()
        # Everything imported so far is shared with the stages: keep the collector off
        # it, or a stage's first full collection touches (and copies) every page.
        gc.freeze()
        listener, ino = _bind(sock_path)
        if previous is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(previous, signal.SIGTERM)  # finish your stages, take no more
        print(
            f"preload: pid {os.getpid()}: group {i + 1}/{len(GROUPS)} imported "
            f"after {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        if i == len(GROUPS) - 1:
            _serve_loop(listener, sock_path, ino, lock_fd)
            _drop_log(log_path)
            return
        previous = os.fork()
        if previous == 0:
            try:
                _serve_loop(listener, sock_path, ino, lock_fd)
            finally:
                os._exit(0)
        listener.close()


def _drop_log(log_path: str) -> None:
    """The last server leaves: its log goes too, unless it recorded a problem
    (a refused request, a failed import), which stays for the user to read."""
    with contextlib.suppress(OSError):
        with open(log_path) as fh:
            text = fh.read()
        if "refused" not in text and "Error" not in text:
            os.unlink(log_path)
        with contextlib.suppress(OSError):
            os.unlink(log_path.removesuffix(".log") + ".first")


def _quiet_exit() -> None:
    """Drop torch._dynamo's exit hook: it tabulates compile times (none: we never
    compile) into a debug log, and took 40 ms of every stage's exit."""
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    hook = getattr(dynamo_utils, "dump_compile_times", None)
    if hook is not None:
        import atexit

        atexit.unregister(hook)


def _bind(sock_path: str) -> tuple[socket.socket, int]:
    tmp = f"{sock_path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    os.chmod(tmp, 0o600)
    listener.listen(16)
    ino = os.stat(tmp).st_ino
    os.rename(tmp, sock_path)  # atomic: a client finds the old server or this one
    return listener, ino


def _serve_loop(listener: socket.socket, sock_path: str, sock_ino: int, lock_fd: int) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)  # a wake-up: we then stop below
    idle = float(os.environ.get("LINFLOW_PRELOAD_IDLE", "60"))
    children: dict[int, socket.socket] = {}  # pid -> the client's connection
    gone: set[socket.socket] = set()  # connections whose client died
    last_work = time.monotonic()
    stop = False
    while True:
        _reap(children, gone)
        if children:
            last_work = time.monotonic()
        elif stop or time.monotonic() - last_work > idle or not _still_ours(sock_path, sock_ino):
            break
        timeout = None if children else max(0.0, idle - (time.monotonic() - last_work)) + 0.01
        try:
            watch = [c for c in children.values() if c not in gone]
            ready, _, _ = select.select([listener, wake_r, *watch], [], [], timeout)
        except InterruptedError:
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                got = os.read(wake_r, 512)
                stop = stop or signal.SIGTERM in got
        for conn in [c for c in ready if c not in (listener, wake_r)]:
            with contextlib.suppress(OSError):
                if conn.recv(1, socket.MSG_PEEK) == b"":  # the client is gone
                    gone.add(conn)
                    pid = next(p for p, c in children.items() if c is conn)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        if listener in ready and not stop:
            _accept(listener, children, [listener.fileno(), wake_r, wake_w, lock_fd])
            last_work = time.monotonic()
    if _still_ours(sock_path, sock_ino):
        with contextlib.suppress(OSError):
            os.unlink(sock_path)
    listener.close()


def _still_ours(sock_path: str, ino: int) -> bool:
    try:
        return os.stat(sock_path).st_ino == ino
    except OSError:
        return False


def _reap(children: dict[int, socket.socket], gone: set[socket.socket]) -> None:
    while True:  # stages, and servers this process forked and retired
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        gone.discard(conn)
        with contextlib.suppress(OSError):
            conn.sendall(f"EXIT {code}\n".encode())
        conn.close()


def _accept(listener: socket.socket, children: dict, private: list[int]) -> None:
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            raise PermissionError("another user")
        conn.settimeout(10)
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        if len(fds) != 3 or len(data) < _HEADER.size:
            raise ValueError("bad request")
        (size,) = _HEADER.unpack_from(data)
        data = data[_HEADER.size :]
        while len(data) < size:
            more = conn.recv(size - len(data))
            if not more:
                raise ValueError("short request")
            data += more
        request = json.loads(data)
        conn.settimeout(None)
    except (OSError, ValueError) as exc:
        print(f"preload: refused a request: {exc}", flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    server = os.getpid()
    pid = os.fork()
    if pid == 0:  # the stage
        try:
            die_with_parent(server)
            for fd in [*private, *(c.fileno() for c in children.values())]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()
            code = _child(request, fds)
        except BaseException:  # noqa: BLE001 - nothing may escape into the worker's loop
            code = 1
        os._exit(code)
    for fd in fds:
        os.close(fd)  # else the worker would hold the client's pipes open
    print(f"preload: stage pid {pid}: linflow {' '.join(request['argv'])}", flush=True)
    children[pid] = conn
    with contextlib.suppress(OSError):
        conn.sendall(f"PID {pid}\n".encode())


def die_with_parent(parent: int) -> None:
    """Get SIGTERM when the process that started us dies (Linux), and check it has not
    already: a stage whose worker or client is gone stops -- its run ends KILLED and
    it writes nothing -- instead of training on, orphaned, beside a re-run."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _child(request: dict, fds: list[int]) -> int:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[:] = request["path"]
    sys.argv = [sys.argv[0] if sys.argv else "linflow", *request["argv"]]
    code: int = 1
    try:
        from linflow.cli import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - report like the interpreter would
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    return code if 0 <= code < 256 else 1
