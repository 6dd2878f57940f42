"""Faces: a request to enrol a photo of a person, done: the gallery part made and stored."""

from __future__ import annotations

from typing import Protocol

from ..imaging import ImageError
from ..messages import Request, Result
from ..model.recognizer import Recognizer
from ..model.spec import SpecError


class Enrolments(Protocol):
    def add_enrolment(self, rid: str, data: bytes) -> None: ...


def enrol(
    req: Request, data: bytes, recognizer: Recognizer, enrolments: Enrolments | None, worker: str, total_s: float
) -> Result:
    """Add the photo to the gallery as `req.person`; the answer says what was added, or why not.
    One bad photo fails alone."""
    timings = {"total": round(total_s, 4)}

    def failure(code: str, reason: str) -> Result:
        return Result.failure(req, code, reason, timings=timings, worker=worker)

    try:
        part, problem = recognizer.enroll(req.person, data, f"{req.person}/{req.name}")
    except ImageError as err:
        return failure(err.code, err.reason)
    except SpecError as err:
        return failure("not_supported", str(err))
    except Exception as exc:
        failed = ImageError.unexpected("cannot enrol image", exc)
        return failure(failed.code, failed.reason)
    if enrolments is None:
        return failure("not_supported", "this worker keeps no gallery")
    enrolments.add_enrolment(req.id, part)
    return Result.of(req, "done", timings=timings, worker=worker, label=req.person, reason=problem)
