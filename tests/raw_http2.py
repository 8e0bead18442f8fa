"""A hand-made HTTP/2 client for the tests: it opens gRPC streams with their HEADERS and never
sends a message on them, which no gRPC library does (pyarrow's clients send their first message
at once). It answers SETTINGS and PING, so the connection stays up until the server ends it."""
from __future__ import annotations

import socket
import struct
import threading

HEADERS, SETTINGS, PING = 1, 4, 6
END_HEADERS, ACK = 0x4, 0x1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: int | str, value: str) -> bytes:
    """An HPACK literal without indexing: `name` an index of the static table, or a new name."""
    if isinstance(name, int):
        head = bytes([name]) if name < 15 else bytes([0x0F, name - 15])
    else:
        head = b"\x00" + bytes([len(name)]) + name.encode()
    return head + bytes([len(value)]) + value.encode()


class SilentStreams:
    """`count` streams of `method` on one connection, each opened and left without a message."""

    def __init__(self, host: str, port: int, count: int, method: str = "DoExchange"):
        self.closed = threading.Event()
        self._sock = socket.create_connection((host, port))
        self._sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0))
        threading.Thread(target=self._answer, daemon=True).start()
        headers = (b"\x83\x86"  # :method POST, :scheme http
                   + _literal(4, f"/arrow.flight.protocol.FlightService/{method}") + _literal(1, f"{host}:{port}")
                   + _literal(31, "application/grpc") + _literal("te", "trailers"))
        for i in range(count):
            self._sock.sendall(_frame(HEADERS, END_HEADERS, 1 + 2 * i, headers))

    def _answer(self) -> None:
        buffered = b""
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                buffered += data
                while len(buffered) >= 9:
                    length, kind, flags = int.from_bytes(buffered[:3], "big"), buffered[3], buffered[4]
                    if len(buffered) < 9 + length:
                        break
                    payload, buffered = buffered[9:9 + length], buffered[9 + length:]
                    if kind == SETTINGS and not flags & ACK:
                        self._sock.sendall(_frame(SETTINGS, ACK, 0))
                    elif kind == PING and not flags & ACK:
                        self._sock.sendall(_frame(PING, ACK, 0, payload))
        except OSError:
            pass
        self.closed.set()

    def close(self) -> None:
        self._sock.close()
