"""``DFS_RUNTIME=triton``: each model's engine is a client of a Triton Inference Server.

The service keeps doing what it does on every runtime (decode, faces, crops, the cross-request
batcher); only the forward pass goes over HTTP to Triton (``DFS_TRITON_URL``), which batches again
across service replicas and runs the model where the GPUs are. That is how the service scales out:
many CPU-bound replicas in front of a few GPU Triton pods.

Why these pieces:

* The model's served config (``GET /v2/models/<name>/config``) is read at load and checked against the
  manifest (input name, dims, output name), so a repository that drifted from the service's manifests
  fails loading with the reason instead of scoring with the wrong graph. Batches above the server's
  ``max_batch_size`` are split here: Triton refuses them otherwise.
* The version asked for is the manifest's, so Triton serves exactly the bytes whose calibration and
  ensemble weights the service applies; another version on the server is "not ready", with the reason.
* Connection failures and timeouts are retried with exponential back-off; after that the batch fails
  with :class:`TritonUnavailable`, which the batcher turns into a 503 (never split into halves: a
  smaller batch does not bring a server back). A refusal by Triton (wrong shape, unknown input) is
  :class:`TritonRejected`, not retried.
* ``tritonclient.http`` clients are not thread safe (gevent underneath): one per thread.

Only ``http://`` (and ``https://``) URLs: ``tritonclient[grpc]`` needs protobuf >= 6.30, which clashes with
mediapipe's protobuf < 5 in the same environment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.pipeline import engine_metrics as metrics
from service.pipeline.engines import EngineUnavailable
from service.pipeline.failures import DfsError, DfsFailure, DfsInputError

log = logging.getLogger(__name__)

T = TypeVar("T")

# numpy dtype name -> the KServe v2 datatype Triton expects on the wire
WIRE_DTYPES = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "uint8": "UINT8",
    "int8": "INT8",
    "bool": "BOOL",
}
TYPE_TO_WIRE = {f"TYPE_{v}": v for v in WIRE_DTYPES.values()}


class TritonUnavailable(EngineUnavailable):
    """Triton cannot be reached (after the retries), timed out, or the model is not ready there."""


class TritonRejected(DfsFailure):
    """Triton answered and refused the request (e.g. a wrong shape); retrying would not help."""


def parse_triton_url(url: str) -> tuple[str, bool]:
    """``http://host:port[/path]`` -> (``host:port[/path]``, ssl). Refuses what the client cannot do, saying why."""
    url = url.strip()
    if not url:
        raise DfsInputError("DFS_RUNTIME=triton needs DFS_TRITON_URL, e.g. http://triton:8000")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise DfsInputError(f"DFS_TRITON_URL={url!r} has no scheme; use http://host:port")
    if scheme == "grpc":
        raise DfsInputError(
            "DFS_TRITON_URL: grpc:// is not supported: tritonclient[grpc] needs protobuf >= 6.30, which clashes "
            "with mediapipe's protobuf < 5 in the service's environment; use Triton's HTTP port (http://host:8000)"
        )
    if scheme not in ("http", "https") or not rest.strip("/"):
        raise DfsInputError(f"DFS_TRITON_URL={url!r}: expected http://host:port or https://host:port")
    return rest.rstrip("/"), scheme == "https"


@dataclass(frozen=True)
class TritonSettings:
    url: str
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    retries: int = 2
    backoff_s: float = 0.2


class TritonClients:
    """One ``tritonclient.http.InferenceServerClient`` per thread (they are not thread safe)."""

    def __init__(self, settings: TritonSettings) -> None:
        self.settings = settings
        self.address, self.ssl = parse_triton_url(settings.url)
        self._local = threading.local()

    def get(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(
                self.address,
                ssl=self.ssl,
                connection_timeout=self.settings.connect_timeout_s,
                network_timeout=self.settings.timeout_s,
            )
            self._local.client = client
        return client

    def reset(self) -> None:
        """Drop this thread's client, so the next call opens fresh connections (after a server restart)."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass


def _is_connection_error(exc: BaseException) -> bool:
    """Connection refused/reset, timeouts (socket's and gevent's), and Triton's 5xx / "unavailable"."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return True
    if type(exc).__module__.startswith("gevent") and "Timeout" in type(exc).__name__:
        return True
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = str(exc.message() or "").lower()
        # a model unloaded or not (yet) loaded on the server answers 400 "unknown model" / "not ready"
        return status.startswith("5") or "unknown model" in message or "is not ready" in message
    return False


def describe(exc: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = exc.status()
        return f"[{status}] {exc.message()}" if status else str(exc.message())
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_with_retries(clients: TritonClients, model: str, what: str, call: Callable[[Any], T]) -> T:
    """``call(client)``, retried on connection errors with exponential back-off; else the error, typed.

    tenacity does the retrying; what is ours is which errors are worth a retry
    (:func:`_is_connection_error`: gevent's timeout is a ``BaseException``, which tenacity's own
    predicates would not see as an error), a fresh client before each retry, and the metrics.
    """
    from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential
    from tritonclient.utils import InferenceServerException

    settings = clients.settings

    def before_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        metrics.REMOTE_RETRIES.labels(model).inc()
        log.warning(
            "Triton %s for %s failed (%s); retry %d/%d in %.2f s",
            what,
            model,
            describe(exc) if exc else "?",
            state.attempt_number,
            settings.retries,
            state.upcoming_sleep,
        )

    def attempt() -> T:
        try:
            return call(clients.get())
        except BaseException as exc:  # noqa: BLE001 - gevent.Timeout is a BaseException
            if _is_connection_error(exc) and not isinstance(exc, KeyboardInterrupt | SystemExit):
                clients.reset()  # the next attempt gets a new connection
                raise _Retryable(exc) from exc
            raise

    retrying = Retrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, _Retryable)),
        stop=stop_after_attempt(settings.retries + 1),
        wait=wait_exponential(multiplier=settings.backoff_s, exp_base=2, min=0, max=60),
        before_sleep=before_retry,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _Retryable as wrapped:
        exc = wrapped.error
        kind = "timeout" if "timeout" in type(exc).__name__.lower() else "unavailable"
        metrics.REMOTE_ERRORS.labels(model, kind).inc()
        attempts = retrying.statistics.get("attempt_number", settings.retries + 1)
        raise TritonUnavailable(
            f"Triton at {settings.url} unreachable for {what} of {model} after {attempts} attempts: {describe(exc)}"
        ) from exc
    except InferenceServerException as exc:
        metrics.REMOTE_ERRORS.labels(model, "rejected").inc()
        raise TritonRejected(f"Triton refused {what} of {model}: {describe(exc)}") from exc


class _Retryable(DfsError):
    """Carries a connection error (possibly a ``BaseException`` such as gevent's timeout) through tenacity."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class ServedModel:
    """What Triton says it serves for one model: the facts the client needs to call it."""

    name: str
    version: str
    max_batch_size: int
    input_name: str
    input_dims: tuple[int, ...]
    input_datatype: str
    output_name: str


def served_model(clients: TritonClients, name: str, version: str, output_name: str = "logit") -> ServedModel:
    """Read the model's config from Triton; :class:`TritonUnavailable` if it is not ready there.

    ``output_name`` is the score output the service asks for; a model may have more (PCL-I2G's
    exported ``heatmap``), which Triton then does not send.
    """

    def ready(client: Any) -> bool:
        return bool(client.is_server_ready()) and bool(client.is_model_ready(name, version))

    if not call_with_retries(clients, name, "readiness", ready):
        raise TritonUnavailable(f"Triton at {clients.settings.url}: model {name} version {version} is not ready")
    config = call_with_retries(clients, name, "config", lambda client: client.get_model_config(name, version))
    inputs, outputs = config.get("input") or [], config.get("output") or []
    output_names = [o.get("name") for o in outputs]
    if len(inputs) != 1 or output_name not in output_names:
        raise DfsFailure(
            f"Triton model {name}: expected one input and an output {output_name!r}, config has "
            f"{[i.get('name') for i in inputs]} / {output_names}"
        )
    datatype = TYPE_TO_WIRE.get(inputs[0].get("data_type", ""), "")
    if not datatype:
        raise DfsFailure(f"Triton model {name}: input data type {inputs[0].get('data_type')} is not supported")
    return ServedModel(
        name=name,
        version=version,
        max_batch_size=int(config.get("max_batch_size") or 0),
        input_name=inputs[0]["name"],
        input_dims=tuple(int(d) for d in inputs[0].get("dims", [])),
        input_datatype=datatype,
        output_name=output_name,
    )


class TritonEngine:
    """An engine whose forward pass is a Triton inference request (see the module docstring)."""

    def __init__(
        self,
        clients: TritonClients,
        name: str,
        version: int,
        *,
        input_name: str,
        output_name: str,
        item_shape: tuple[int, ...],
    ) -> None:
        self.clients = clients
        self.name = name
        self.served = served_model(clients, name, str(version), output_name)
        self.runtime = f"triton:{self.served.version}@{clients.settings.url}"
        problems = []
        if self.served.input_name != input_name:
            problems.append(f"input {self.served.input_name!r} (manifest: {input_name!r})")
        dims = self.served.input_dims
        if self.served.max_batch_size < 1:
            problems.append(
                "max_batch_size 0 (the service needs batching: config.pbtxt from python -m export.triton_config)"
            )
        elif len(dims) != len(item_shape) or any(d not in (-1, s) for d, s in zip(dims, item_shape, strict=False)):
            problems.append(f"input dims {list(dims)} (manifest: {list(item_shape)})")
        if problems:
            raise DfsFailure(f"Triton model {name} v{version} does not match the manifest: " + "; ".join(problems))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Fake logits for ``batch``, in requests of at most the server's ``max_batch_size``."""
        step = self.served.max_batch_size
        parts = [self._infer(batch[start : start + step]) for start in range(0, len(batch), step)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        import tritonclient.http as httpclient

        chunk = np.ascontiguousarray(chunk)
        datatype = WIRE_DTYPES.get(chunk.dtype.name, chunk.dtype.name)
        served = self.served

        def infer(client: Any) -> np.ndarray:
            request = httpclient.InferInput(served.input_name, list(chunk.shape), datatype)
            request.set_data_from_numpy(chunk, binary_data=True)
            result = client.infer(
                served.name,
                [request],
                model_version=served.version,
                outputs=[httpclient.InferRequestedOutput(served.output_name, binary_data=True)],
            )
            return result.as_numpy(served.output_name)

        started = time.perf_counter()
        out = call_with_retries(self.clients, self.name, "inference", infer)
        metrics.REMOTE_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return np.asarray(out, dtype=np.float32).reshape(-1)


class TritonHealth:
    """Triton's readiness and each served model's, for ``/healthcheck`` (cached briefly: probes are frequent)."""

    def __init__(self, clients: TritonClients, models: dict[str, str], *, cache_s: float = 1.0) -> None:
        self.clients = clients
        self.models = models  # name -> version
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._reason: str | None = None

    def check(self) -> str | None:
        """``None`` when the server and every model are ready; else why not. Never raises."""
        with self._lock:
            if time.monotonic() - self._checked_at < self.cache_s:
                return self._reason
            self._reason, ready = self._probe()
            self._checked_at = time.monotonic()
            for name in self.models:
                metrics.REMOTE_READY.labels(name).set(1 if ready.get(name) else 0)
            return self._reason

    def _probe(self) -> tuple[str | None, dict[str, bool]]:
        url = self.clients.settings.url
        try:
            client = self.clients.get()
            server_ready = bool(client.is_server_ready())
            # asked even when the server is not ready: with strict readiness one missing model is the cause
            ready = {name: bool(client.is_model_ready(name, version)) for name, version in self.models.items()}
        except BaseException as exc:  # noqa: BLE001 - gevent.Timeout is a BaseException; a probe never raises
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            self.clients.reset()
            return f"Triton at {url} unreachable: {describe(exc)}", {}
        not_ready = [f"{name} v{self.models[name]}" for name, ok in ready.items() if not ok]
        if not_ready:
            return f"Triton at {url}: model(s) not ready: {', '.join(not_ready)}", ready
        if not server_ready:
            return f"Triton at {url} is not ready", ready
        return None, ready
