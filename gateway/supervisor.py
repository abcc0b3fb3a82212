"""The worker supervisor: `gateway run --workers N` with N > 1.

    start: a directory for the workers' metrics files -> N workers, each
           `gateway run --worker`: one serving process (server.py) on the shared port
           (SO_REUSEPORT)
    SIGHUP: forwarded to every worker, each reloads its policy (server.py, reload.py)
    a worker exits: its live gauges are dropped (its counters stay in the sum), a new one
                    starts 0.5 s later
    SIGTERM/SIGINT: SIGTERM to every worker, each drains (server.py); they are waited for up to
                    timeouts.shutdown + 5 s, then killed; exit 0 when they all exited cleanly

The shape is uvicorn's supervisors/multiprocess.py: a `Worker` wraps one process (start,
signal, wait), a `Supervisor` owns the N of them (start them, keep them alive, forward signals,
stop them). Unlike uvicorn's, a SIGHUP reloads the workers' policy instead of restarting them,
workers are new interpreters (`python -m gateway`, not forks of the supervisor) that open their
own listeners, and the supervisor serves nothing: its loop only acts on what its signal handlers
recorded and polls the workers.

SIGHUP is held (blocked) while a worker is started: the worker inherits the signal mask across
exec, so a reload forwarded before it can reload stays pending in it instead of killing it
(server.py unblocks it once its reload handler is in place).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from prometheus_client.multiprocess import mark_process_dead

log = logging.getLogger("gateway.supervisor")

POLL_INTERVAL = 0.1  # seconds between looks at the signals received and the workers
RESTART_DELAY = 0.5  # seconds before a worker that exited is replaced
STOP_GRACE = 5.0  # seconds past timeouts.shutdown a stopping worker gets before SIGKILL


@contextlib.contextmanager
def sighup_held() -> Iterator[None]:
    """SIGHUP blocked inside, and the mask as it was after."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Worker:
    """One serving process: `gateway run --config FILE --worker`."""

    def __init__(self, config_path: str) -> None:
        self.command = [sys.executable, "-m", "gateway", "run", "--config", config_path,
                        "--worker"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with sighup_held():  # inherited by the worker: see the module's docstring
            self.process = subprocess.Popen(self.command)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.returncode

    def exited(self) -> bool:
        assert self.process is not None
        return self.process.poll() is not None

    def send(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def wait(self, deadline: float) -> int:
        """Its exit status; killed when it is still running at `deadline` (monotonic)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class Supervisor:
    """N workers on one port: started, kept alive, told to reload and to stop."""

    def __init__(self, config_path: str, workers: int, shutdown_timeout: float,
                 metrics_dir: str) -> None:
        self.config_path = config_path
        self.count = workers
        self.shutdown_timeout = shutdown_timeout
        self.metrics_dir = metrics_dir
        self.workers: list[Worker] = []
        self.should_exit = False
        self.reload_pending = False

    # signal handlers: they only record; the loop in run() acts
    def handle_term(self, _signum: int, _frame: object) -> None:
        self.should_exit = True

    def handle_hup(self, _signum: int, _frame: object) -> None:
        self.reload_pending = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGINT, self.handle_term)
        signal.signal(signal.SIGHUP, self.handle_hup)

    def run(self) -> int:
        """Serve through the workers until SIGTERM/SIGINT; 0 when they all stopped cleanly."""
        self.install_signal_handlers()
        self.start_workers()
        # SIGHUP is still blocked (cli): one received while the workers started is
        # delivered now and forwarded
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        log.info("supervisor pid %d started %d workers: %s", os.getpid(), self.count,
                 " ".join(str(w.pid) for w in self.workers))
        while not self.should_exit:
            time.sleep(POLL_INTERVAL)
            if self.reload_pending:
                self.reload_pending = False
                self.signal_workers(signal.SIGHUP)
            self.keep_workers_alive()
        self.signal_workers(signal.SIGTERM)
        return self.join_workers()

    def start_workers(self) -> None:
        for _ in range(self.count):
            worker = Worker(self.config_path)
            worker.start()
            self.workers.append(worker)

    def signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            worker.send(signum)

    def keep_workers_alive(self) -> None:
        for index, worker in enumerate(self.workers):
            if worker.exited() and not self.should_exit:
                log.error("worker %d exited with %s; starting a new one", worker.pid,
                          worker.returncode)
                mark_process_dead(worker.pid, self.metrics_dir)  # its live gauges go
                time.sleep(RESTART_DELAY)
                replacement = Worker(self.config_path)
                replacement.start()
                self.workers[index] = replacement

    def join_workers(self) -> int:
        """Wait for the stopping workers (killing those that outlast the shutdown timeout):
        0 when every one exited cleanly, else 1."""
        deadline = time.monotonic() + self.shutdown_timeout + STOP_GRACE
        code = 0
        for worker in self.workers:
            rc = worker.wait(deadline)
            # killed by SIGTERM itself: it had not installed its handler, so it never served
            if rc not in (0, -signal.SIGTERM):
                log.error("worker %d exited with %s during shutdown", worker.pid, rc)
                code = 1
        return code


def supervise(config_path: str, workers: int, shutdown_timeout: float) -> int:
    """Run `workers` worker processes on one port; forward signals; restart the ones that die."""
    # workers keep their metrics in files here, and any of them serves the sum on /metrics
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    code = Supervisor(config_path, workers, shutdown_timeout, metrics_dir).run()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return code
