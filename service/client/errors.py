"""The one exception the client raises for a refused request: it carries the problem document."""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from .models import Problem


class ProblemError(Exception):
    """The broker answered with an error status; ``problem`` is its RFC 9457 document."""

    def __init__(self, problem: Problem, *, method: str, url: str) -> None:
        super().__init__(f"{method} {url}: {problem.status} {problem.code}: {problem.detail or problem.title}")
        self.problem = problem
        self.method = method
        self.url = url

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def code(self) -> str:
        return self.problem.code

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        request = response.request
        return cls(_problem_of(response), method=request.method, url=str(request.url))


def _problem_of(response: httpx.Response) -> Problem:
    try:
        body = response.json()
        if isinstance(body, dict):
            return Problem.model_validate({**body, "status": response.status_code})
    except (ValueError, ValidationError):
        pass
    # Not a problem document (a proxy's error page, say): RFC 9457's about:blank, the status says it all.
    return Problem(status=response.status_code, title=response.reason_phrase, detail=response.text[:500])
