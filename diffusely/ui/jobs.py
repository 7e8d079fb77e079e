"""Long work off the request path: a training or synth job runs in a background thread, the page polls it.

One Job per target folder at a time inside this server; a job in another process (or a second server) on the
same run is refused by the run's own lock (diffusely._files.run_lock), whose `Busy` message the page shows.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Job:
    """A function run in a daemon thread, given a stop flag to poll; `message` ends as its result or error line."""

    name: str
    work: Callable[["Job"], str]
    stop: threading.Event = field(default_factory=threading.Event)
    message: str = "starting"
    error: Optional[str] = None
    thread: Optional[threading.Thread] = None

    def start(self) -> "Job":
        self.thread = threading.Thread(target=self._run, name=f"diffusely-ui {self.name}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.message = self.work(self)
        except ValueError as e:  # the library's own errors (ConfigError, RunError, Busy, ...) are one line each
            self.error = self.message = f"Error: {e}"
        except Exception as e:  # a bug: keep the page alive and say where
            self.error = self.message = f"Error: {type(e).__name__}: {e} ({traceback.format_exc(limit=-1).strip()})"

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self, seconds: Optional[float] = None) -> None:
        if self.thread is not None:
            self.thread.join(seconds)


class Jobs:
    """The jobs of this server by target (a run or dataset folder): a second start on a busy target is refused."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, key: str, work: Callable[[Job], str]) -> Job:
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and old.running:
                raise ValueError(f"{key} is busy with a job this page started ({old.message}); stop it or wait")
            self._jobs[key] = job = Job(key, work)
        return job.start()

    def get(self, key: str) -> Optional[Job]:
        return self._jobs.get(key)
