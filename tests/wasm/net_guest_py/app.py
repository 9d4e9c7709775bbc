"""A guest that tries to reach the network with Python's socket module (wasi:sockets underneath)."""

import socket

from wit_world import WitWorld


class WitWorld(WitWorld):
    def connect_to(self, port: int) -> str:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.connect(("127.0.0.1", port))
                s.sendall(b"hi")
                return "connected"
        except OSError as err:
            return f"refused: {type(err).__name__}: {err}"
