"""FastAPI dependencies as ``Annotated`` aliases (the full-stack template's ``deps.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.admission import Admission
from service.serving import Serving


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


def get_admission(request: Request) -> Admission:
    return request.app.state.admission


ServingDep = Annotated[Serving, Depends(get_serving)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
