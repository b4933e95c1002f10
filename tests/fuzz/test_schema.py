"""Schemathesis against the service's own OpenAPI document, served by a real running process.

Every operation in ``/openapi.json`` gets up to ``MAX_EXAMPLES`` generated requests, schema-valid
(positive) and, where it takes input, schema-violating (negative), one test per operation and mode
(the GET routes take no input, so Hypothesis has a single case for each), and every answer must be
one the document promises:

- never a 500 (``/predict`` documents a 500 as the shape an unexpected failure takes, but any 500
  is a bug: ``service/errors.py``);
- a status code the operation documents, with a JSON content type, whose body matches the
  documented schema, and a schema-violating request refused with a 4xx (schemathesis's
  ``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance``,
  ``negative_data_rejection`` and its other default checks);
- for an error, exactly ``{"error", "detail", "request_id"}`` with the request id of the
  ``X-Request-ID`` header (``service/api/errors.py``).

Generated ``file_path`` strings are random text, which mostly ends at the first check. So positive
bodies are also, in turn (:func:`real_media_hooks`): pointed at the real files of ``fuzz_media`` (a
face video, no face, audio only, a still GIF, an empty file, a truncated MP4, a PNG named .mp4) with
the generated overrides kept; replaced by a body :func:`within_limits` that reaches decoding,
detection and the models with random valid overrides; or given a :func:`url_like` string (odd
schemes, host spellings, ports, traversal, NUL bytes, over-long names). Uploads get the files' bytes.

Excluded, and why:

- the ``positive_data_acceptance`` check: it expects every schema-valid body to get a 2xx, but the
  schema cannot say "a file that exists under DFS_LOCAL_ROOTS"; a valid body naming no such file is
  rightly a 4xx. The checks above still hold for those answers.
- generated bodies whose ``file_path`` would make the service resolve a host name or connect to a
  public address (:func:`touches_network`): the fuzzer must only ever send traffic to 127.0.0.1.
  Such strings are rare in random text; IP literals the service refuses before connecting
  (loopback, private, ...) are kept, so the URL policy is fuzzed too.

Reproducible: a fixed seed, ``derandomize`` and no example database, so CI fuzzes the same cases
on every run (``DFS_FUZZ_SEED`` explores other cases, ``DFS_FUZZ_EXAMPLES`` raises the bound, locally).

Why ``APIOperation.as_strategy`` under a plain ``@given`` (schemathesis's way for ordinary tests)
rather than ``@schema.parametrize()`` on ``schemathesis.pytest.from_fixture``: the lazy loader sets
``request.node._nodeid``, which pytest 9 no longer has (AttributeError). So schemathesis's fuzzing
phase runs, not its coverage phase (its engine and ``parametrize()`` only).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.hooks import HookDispatcher, HookScope
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.errors import RequestFailure
from service.pipeline import fetch
from tests.fuzz.conftest import LiveService

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("DFS_FUZZ_SEED", "20261201"))
MAX_EXAMPLES = int(os.environ.get("DFS_FUZZ_EXAMPLES", "30"))
ERROR_KEYS = {"error", "detail", "request_id"}

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "deterministic": True, "database": "none"},
    }
)


def touches_network(file_path: str) -> bool:
    """Whether the service, given ``file_path``, would resolve a name or connect anywhere.

    Decided by the service's own parsing (``service/pipeline/fetch.py``), so it agrees with the
    server: a local path, a string it refuses as a URL, or an IP literal it refuses as non-public
    (DFS_ALLOW_PRIVATE_URLS is false in the fuzzed service) never leaves the process.
    """
    text = file_path.strip()
    try:
        if not text or fetch._is_local(text):
            return False
        hop = fetch._parse_http_url(text)
    except RequestFailure:
        return False
    return fetch._ip_literal(hop.host) is None or fetch._address_is_public(hop.host)


def _stays_local(context: schemathesis.HookContext, body: Any) -> bool:
    if isinstance(body, dict) and isinstance(body.get("file_path"), str):
        return not touches_network(body["file_path"])
    return True


def within_limits(paths: list[str], models: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies naming a real file with overrides inside the fuzzed service's limits (FUZZ_ENV), so
    they get past validation and reach decoding, detection and the models: most random overrides
    are above a limit and end as a 422 first."""
    optional = {
        "models": st.lists(st.sampled_from(models), max_size=3),
        "max_frames": st.integers(1, 16),
        "clip_stride": st.integers(16, 64),
        "max_clips_per_track": st.integers(1, 16),
        "frames_per_track": st.integers(1, 32),
    }
    return st.fixed_dictionaries({"file_path": st.sampled_from(paths)}, optional=optional)


#: Hosts that are refused before any connection (DFS_ALLOW_PRIVATE_URLS=false) or do not parse, in
#: the spellings URL parsers disagree on; touches_network drops whatever would still go out.
_HOSTS = [
    "127.0.0.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "10.0.0.1",
    "0",
    "0.0.0.0",
    "0x7f.1",
    "2130706433",
    "[fe80::1%25eth0]",
    "169.254.169.254",
    "[64:ff9b::a00:1]",
    "[2002:a00:1::]",
    "[",
    "]",
    "[::1",
    "a..b",
    "-a.b",
    "%00",
    "xn--",
    "xn--zz",
    "\u00e9.local",
    "h\u0000st",
    "",
    "@",
    ":",
]


def url_like(root: Path) -> st.SearchStrategy[str]:
    """``file_path`` strings shaped like the URLs and paths people (and attackers) send: schemes,
    odd host spellings, ports, traversal out of the local root, NUL bytes, over-long names."""
    scheme = st.sampled_from(["http", "https", "HTTP", "file", "ftp", "data", "javascript", "c", ""])
    host = st.one_of(st.sampled_from(_HOSTS), st.text(max_size=12))
    port = st.one_of(st.just(""), st.integers(-1, 70000).map(lambda p: f":{p}"), st.text(max_size=4).map(":{}".format))
    rest = st.text(max_size=24)
    urls = st.builds(lambda s, h, p, r: f"{s}://{h}{p}/{r}", scheme, host, port, rest)
    local = st.sampled_from(
        [
            str(root),
            f"{root}/",
            f"{root}/face.mp4/",
            f"{root}/../{root.name}/face.mp4",
            f"{root}/../../etc/passwd",
            f"file://{root}/face.mp4",
            f"file://{root}/face%2Emp4",
            f"file:///{root}/%00",
            f"{root}/face.mp4\x00",
            f"{root}/{'a' * 300}",
            f"{root}/{'a/' * 1900}",
            "~/face.mp4",
            "C:\\face.mp4",
            "/proc/self/environ",
            "/dev/zero",
        ]
    )
    return st.one_of(urls, local, st.builds(lambda a, b: a + b, local, rest))


def real_media_hooks(media_files: dict[str, Path], models: list[str]) -> HookDispatcher:
    """A ``flatmap_body`` hook: keep the generated body, point it at one of the real files or at a
    :func:`url_like` string, or replace it with a body :func:`within_limits`.

    For positive cases only: a negative case's body must stay schema-violating, and swapping its
    ``file_path`` could repair the very field that violated the schema."""
    # in fuzz_media's order, the good video first: Hypothesis draws the first element most often
    paths = [str(p) for p in media_files.values()]
    contents = [p.read_bytes() for p in media_files.values()]
    odd_paths = url_like(next(iter(media_files.values())).parent).filter(lambda path: not touches_network(path))

    def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy:
        if isinstance(body, dict) and isinstance(body.get("file_path"), str):
            return st.one_of(
                st.just(body),
                st.sampled_from(paths).map(lambda p: {**body, "file_path": p}),
                within_limits(paths, models),
                odd_paths.map(lambda p: {**body, "file_path": p}),
            )
        if isinstance(body, dict) and "file" in body:
            return st.one_of(st.just(body), st.sampled_from(contents).map(lambda b: {**body, "file": b}))
        return st.just(body)

    hooks = HookDispatcher(scope=HookScope.TEST)
    hooks.hook("flatmap_body")(flatmap_body)
    return hooks


@pytest.fixture(scope="module")
def service_schema(fuzz_service: LiveService) -> schemathesis.BaseSchema:
    """The OpenAPI document as the running service serves it; no case may leave loopback."""
    schema = schemathesis.openapi.from_url(f"{fuzz_service.base_url}/openapi.json", config=CONFIG, timeout=30)
    schema.config.update(base_url=fuzz_service.base_url)
    schema.hook("filter_body")(_stays_local)
    return schema


@pytest.fixture(scope="module")
def positive_hooks(fuzz_service: LiveService, fuzz_media: dict[str, Path]) -> HookDispatcher:
    with fuzz_service.client(timeout=30) as client:
        models = [model["name"] for model in client.get("/models").json()]
    return real_media_hooks(fuzz_media, models)


def assert_documented_error(response: schemathesis.Response) -> None:
    """An error body is exactly the documented error model, carrying the response's request id."""
    assert response.status_code != 500, f"500: {response.text[:2000]}"
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
    assert isinstance(body["error"], str) and body["error"], body
    assert body["request_id"] == response.headers.get("x-request-id", [None])[0], (body, response.headers)


#: Every operation the document lists; test_the_fuzzed_operations_are_all_there keeps this complete.
JOB_OPERATIONS = [
    "POST /jobs",
    "POST /jobs/upload",
    "GET /jobs/{job_id}",
    "DELETE /jobs/{job_id}",
    "GET /jobs/{job_id}/faces/{track_id}.jpg",
    "GET /jobs/{job_id}/heatmaps/{track_id}.png",
    "GET /jobs/{job_id}/annotated.mp4",
]
OPERATIONS = [
    "GET /healthcheck",
    "GET /livez",
    "GET /models",
    "GET /ensemble",
    "POST /predict",
    "POST /predict/upload",
    *JOB_OPERATIONS,
]
#: Those that take input: only they have anything to violate, so only they get negative cases.
WITH_INPUT = {"POST /predict", "POST /predict/upload", *JOB_OPERATIONS}
#: Inputs with nothing to violate: a free-form string path parameter only (any job id is valid by the
#: schema, so no negative case exists; an unknown id is a positive case answered 404).
NOTHING_TO_VIOLATE = {"GET /jobs/{job_id}", "DELETE /jobs/{job_id}", "GET /jobs/{job_id}/annotated.mp4"}
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in OPERATIONS if label in WITH_INPUT - NOTHING_TO_VIOLATE
]


def takes_input(operation: schemathesis.APIOperation) -> bool:
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def test_the_fuzzed_operations_are_all_there(service_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in service_schema.get_all_operations()]
    assert {op.label for op in operations} == set(OPERATIONS), "a route was added or removed: list it in OPERATIONS"
    assert {op.label for op in operations if takes_input(op)} == WITH_INPUT, "update WITH_INPUT"


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_every_answer_is_documented(
    service_schema: schemathesis.BaseSchema, positive_hooks: HookDispatcher, label: str, mode: GenerationMode
) -> None:
    """``MAX_EXAMPLES`` generated requests to one operation (schema-valid ones, or schema-violating
    ones), each answered as documented (see the module docstring)."""
    operation = service_schema.find_operation_by_label(label)
    assert operation is not None, label
    hooks = positive_hooks if mode is GenerationMode.POSITIVE else None

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(mode, hooks=hooks))
    def answered_as_documented(case: schemathesis.Case) -> None:
        response = case.call(timeout=60)
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        assert_documented_error(response)
        seen[_outcome(response)] += 1

    seen: Counter[str] = Counter()
    answered_as_documented()
    print(f"{label} {mode.value}: {dict(sorted(seen.items()))}")  # what was reached (pytest -s)


def _outcome(response: schemathesis.Response) -> str:
    if response.status_code < 400:
        return str(response.status_code)
    return f"{response.status_code} {response.json().get('error')}"
