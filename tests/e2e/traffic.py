"""Traffic for e2e tests, run inside a pod with `flowscope lab exec NS/POD -- python3 THIS ...`.

    connects IP PORT SECONDS   new TCP connections back to back (HTTP GET /hostname each);
                               prints {"ok": n, "failed": n, "first_failure_at": s | null}
    stream IP PORT SECONDS     one TCP connection, a line echoed every 20 ms;
                               prints {"ok": n, "failed": n, "error": str | null}
    echo-server PORT SECONDS   the echo end of `stream`
Standard library only: it runs with whatever python3 the pod finds.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def connects(ip: str, port: int, seconds: float) -> dict:
    ok = failed = 0
    first_failure = None
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            with socket.create_connection((ip, port), timeout=0.5) as s:
                s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
                s.settimeout(0.5)
                data = s.recv(4096)
            if not data:
                raise OSError("no answer")
            ok += 1
        except OSError:
            failed += 1
            if first_failure is None:
                first_failure = round(time.monotonic() - start, 3)
        time.sleep(0.01)
    return {"ok": ok, "failed": failed, "first_failure_at": first_failure}


def stream(ip: str, port: int, seconds: float) -> dict:
    ok = failed = 0
    error = None
    start = time.monotonic()
    try:
        with socket.create_connection((ip, port), timeout=2) as s:
            s.settimeout(2)
            f = s.makefile("rwb")
            while time.monotonic() - start < seconds:
                line = f"{ok}\n".encode()
                f.write(line)
                f.flush()
                if f.readline() == line:
                    ok += 1
                else:
                    failed += 1
                time.sleep(0.02)
    except OSError as e:
        failed += 1
        error = f"{type(e).__name__}: {e}"
    return {"ok": ok, "failed": failed, "error": error}


def echo_server(port: int, seconds: float) -> dict:
    srv = socket.create_server(("0.0.0.0", port))
    srv.settimeout(seconds)
    served = 0

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                f.write(line)
                f.flush()

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            break
        served += 1
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    return {"served": served}


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "connects":
        result = connects(argv[1], int(argv[2]), float(argv[3]))
    elif mode == "stream":
        result = stream(argv[1], int(argv[2]), float(argv[3]))
    elif mode == "echo-server":
        result = echo_server(int(argv[1]), float(argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
