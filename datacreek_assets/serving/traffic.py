"""A traffic generator for the router: a steady request rate from a few client threads, every
request with its own request id, latencies kept per release role. The demo drives canaries
with it and the serving benchmark measures with it."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import requests

PROMPTS = ["What does the json module provide?", "How do I read a CSV file?", "What is a knowledge graph?",
           "Summarise the release notes.", "Which formats does the parser accept?"]


class TrafficGenerator:
    def __init__(self, url: str, key: str, rate_per_s: float, clients: int = 2, max_tokens: int = 4,
                 prefix: str = "load", retrieval: bool = True):
        if rate_per_s <= 0 or clients < 1:
            raise ValueError("the rate and the number of clients must be positive")
        self.url, self.key, self.rate, self.clients = url.rstrip("/"), key, rate_per_s, clients
        self.max_tokens, self.prefix, self.retrieval = max_tokens, prefix, retrieval
        self.status = Counter()
        self.latencies: dict[str, list[tuple[float, float]]] = defaultdict(list)  # role -> (sent at, seconds)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._sent = 0

    def start(self) -> "TrafficGenerator":
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, name=f"traffic-{i}", daemon=True)
                         for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    @property
    def sent(self) -> int:
        return self._sent

    def _next(self) -> tuple[int, float]:
        """The next request's number and when it is due (open loop: the schedule does not slow
        down when responses do, as real clients do not)."""
        with self._lock:
            n = self._sent
            self._sent += 1
        return n, self._started + n / self.rate

    def _client(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        while not self._stop.is_set():
            n, due = self._next()
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            body = {"messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
                    "max_tokens": self.max_tokens}
            sent = time.monotonic()
            try:
                reply = session.post(f"{self.url}/v1/chat/completions", json=body, timeout=60,
                                     headers={"X-Request-Id": f"{self.prefix}-{n}",
                                              "X-Retrieval": "on" if self.retrieval else "off"})
            except requests.RequestException as err:
                self.status[type(err).__name__] += 1
                continue
            latency = time.monotonic() - sent
            self.status[reply.status_code] += 1
            if reply.status_code == 200:
                self.latencies[reply.headers.get("X-Release-Role", "?")].append((sent, latency))
