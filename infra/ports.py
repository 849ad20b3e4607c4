"""Small socket helpers: is a port free, wait until one answers."""

from __future__ import annotations

import socket
import time

from infra.errors import PortInUse


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free(port: int, what: str, setting: str) -> None:
    """Raise PortInUse naming the component and the setting that moves it."""
    if not port_is_free(port):
        raise PortInUse(
            f"port {port} needed by the {what} is already in use; stop what holds it "
            f"(`privmesh down` if it is an earlier stack) or set {setting} to a free port"
        )


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
