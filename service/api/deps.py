"""FastAPI dependencies as ``Annotated`` aliases (the full-stack template's ``deps.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.admission import Admission
from service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_admission(request: Request) -> Admission:
    return request.app.state.admission


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
