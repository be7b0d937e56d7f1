"""Slow HTTP clients, as a hostile peer would run them (stdlib only, no TensorFlow).

Imported by tests/test_slow_peers.py for one slow client (:class:`Dripper`), and run as its own
process for many at once, so that their timing does not wait on the server's threads:

  python tests/helpers/slow_clients.py HOST PORT COUNT ANNOUNCED EVERY_S GIVE_UP_S

starts COUNT clients that each announce a body of ANNOUNCED bytes and send one byte of it every
EVERY_S seconds; prints ``ready`` once each has sent two, then one JSON line: per client
``{"answered_at", "seconds", "closed", "sent", "reply"}`` (``answered_at`` is time.monotonic(),
the system-wide CLOCK_MONOTONIC on Linux, comparable with the test's).
"""

import concurrent.futures
import json
import socket
import sys
import time


def post_head(length: int, path: str = "/v1/models/teacher:predict") -> bytes:
    """The request line and headers of a POST announcing a body of ``length`` bytes."""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


class Dripper:
    """A slow client: sends ``head``, then one byte (``drip``) every ``every_s`` seconds until the
    server answers or closes, reading the answer to its end; gives up after ``give_up_s``.

    The drip interval is the wait for the server's answer (a recv with that timeout), no sleep.
    Attributes after :meth:`run`: ``sent`` (drip bytes sent), ``answered_at`` (time.monotonic()
    of the answer's first byte, or None), ``reply`` (bytes), ``closed`` (seconds from the start
    until the server closed the connection, or None)."""

    def __init__(self, address, head: bytes, drip: bytes = b" ", every_s: float = 0.5,
                 give_up_s: float = 20.0):
        self.address, self.head, self.drip = address, head, drip
        self.every_s, self.give_up_s = every_s, give_up_s
        self.sent, self.answered_at, self.reply, self.closed = 0, None, b"", None
        self.started = None

    def run(self) -> "Dripper":
        with socket.create_connection(self.address, timeout=30) as sock:
            self.started = time.monotonic()
            sock.sendall(self.head)
            while time.monotonic() - self.started < self.give_up_s:
                sock.settimeout(self.every_s)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:  # No answer within the interval: one more byte.
                    if self.answered_at is None:
                        try:
                            sock.sendall(self.drip)
                            self.sent += 1
                        except OSError:  # Closed by the server: what it said is read next.
                            pass
                    continue
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    self.closed = time.monotonic() - self.started
                    break
                self.answered_at = self.answered_at or time.monotonic()
                self.reply += chunk
        return self

    @property
    def seconds(self) -> float | None:
        """Seconds from the first byte sent to the answer's first byte (None: no answer)."""
        return None if self.answered_at is None else self.answered_at - self.started


def main(host, port, count, announced, every_s, give_up_s):
    drippers = [Dripper((host, int(port)), post_head(int(announced)) + b"{",
                        every_s=float(every_s), give_up_s=float(give_up_s))
                for _ in range(int(count))]
    with concurrent.futures.ThreadPoolExecutor(len(drippers)) as pool:
        futures = [pool.submit(d.run) for d in drippers]
        deadline = time.monotonic() + 30
        while not all(d.sent >= 2 for d in drippers) and time.monotonic() < deadline:
            time.sleep(0.02)  # The poll interval of a loop bounded by the deadline.
        print("ready", flush=True)
        for f in futures:
            f.result()
    print(json.dumps([{"answered_at": d.answered_at, "seconds": d.seconds, "closed": d.closed,
                       "sent": d.sent, "reply": d.reply.decode("latin-1")} for d in drippers]),
          flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
