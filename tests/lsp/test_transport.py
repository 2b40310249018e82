"""`tinymorph serve`: stdio by default, TCP on 127.0.0.1 only, clear errors for bad flags."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            addr, hexport = local.split(":")
            if int(hexport, 16) == port and state == "0A":
                found.append(addr)
    return found


def frame(payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_tcp_binds_loopback_only_and_speaks_lsp(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "lsp_server", "--tcp", "--port", str(port), "--log-file", str(log),
                             "-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.1)
        assert listening(port) == ["0100007F"]  # 127.0.0.1, not 0.0.0.0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            body = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "tinymorph/x", "params": {}}).encode()
            conn.sendall(b"Content-Length: %d\r\n\r\n" % (len(body) - 2) + body)
            # a length 2 bytes short: the body's tail runs into the next header line, which the server cuts back
            conn.sendall(frame({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "processId": None, "rootUri": None, "capabilities": {},
                "initializationOptions": {"model": str(tmp_path / "missing"), "sae": "none"}}}))
            data = b""
            while b'"id": 1' not in data and b'"id":1' not in data:
                chunk = conn.recv(65536)
                assert chunk, "connection closed"
                data += chunk
        reply = json.loads(data.split(b"\r\n\r\n", 1)[1][: int(data.split(b"\r\n")[0].split(b":")[1])])
        caps = reply["result"]["capabilities"]
        assert caps["inlayHintProvider"] and caps["hoverProvider"] and caps["completionProvider"]
        assert caps["codeActionProvider"]["resolveProvider"] is True
        assert "tinymorph.steer.add" in caps["executeCommandProvider"]["commands"]
        assert caps["positionEncoding"] == "utf-16"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out == b""  # nothing on stdout in TCP mode either
    assert log.exists()
    assert f"listening on 127.0.0.1:{port} (loopback only" in err.decode()


def test_tcp_serves_loopback_addresses_only() -> None:
    from lsp_server.__main__ import create_server
    from lsp_server.transport import serve_tcp

    server = create_server()
    try:
        for host in ("0.0.0.0", "192.168.1.2", "::"):
            with pytest.raises(ValueError, match="loopback address only"):
                serve_tcp(server, host, free_port())
    finally:
        server.worker.stop()


def test_bad_flags_are_clear_errors() -> None:
    result = subprocess.run([sys.executable, "-m", "lsp_server", "--port", "0", "--tcp"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "--port must be between" in result.stderr and result.stdout == ""
    result = subprocess.run([sys.executable, "-m", "lsp_server.cli", "serve", "--bogus"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
