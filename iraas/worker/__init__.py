"""The app tier: workers that take batches of requests, recognise them, and answer."""

from .enrol import Enrolments
from .loop import Worker, WorkerConfig

__all__ = ["Enrolments", "Worker", "WorkerConfig"]
