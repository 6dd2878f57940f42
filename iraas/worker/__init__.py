"""The app tier: workers that take batches of requests, recognise them, and answer."""

from .loop import Enrolments, Worker, WorkerConfig

__all__ = ["Enrolments", "Worker", "WorkerConfig"]
