"""flowserve's one exception hierarchy.

    FlowserveError
    ├── ConfigError                  bad settings or missing provider credentials
    │   └── SchemaError              the database's schema is behind (or ahead of) this code
    ├── FlowValidationError          a flow file is wrong (names node and field)
    ├── NotFoundError                org, flow, version or run unknown (or not yours)
    ├── AuthError                    missing / unknown / revoked / wrong-org key
    │   └── ForbiddenError           key is valid but lacks the right (public key publishing)
    ├── InputError                   request body is wrong (422; names the field)
    │   ├── ParameterError           path or query parameters are wrong (422; each named)
    │   ├── PayloadTooLargeError     body over the size limit (413)
    │   ├── BadFileError             an uploaded file is missing, empty or unreadable (422)
    │   └── UnsupportedMediaTypeError  an uploaded file's type is not supported (415)
    ├── LimitError                   rate / concurrency limit hit (429/503, retry_after)
    ├── RunTimeoutError              a run hit its total or idle time limit (state FAILED)
    ├── APIError                     (Python client) a server answered with an error
    │   └── RunFailedError           (Python client) the run failed after streaming began
    └── NodeError                    a node failed while running (carries node_id)
        ├── OutputTooLargeError      a node's text, or the run's, is over the size limit
        ├── KnowledgeBaseNotFoundError  a knowledge base a node searches was deleted
        └── ProviderError            raised by a provider adapter at its boundary
            ├── ProviderAuthError        upstream rejected the credentials
            ├── ProviderRateLimitError   upstream 429 (retry_after)
            ├── ProviderBadRequestError  upstream refused the request (4xx)
            ├── ProviderOverloadedError  upstream overloaded (503/529, overloaded_error)
            ├── ProviderTimeoutError     no first token / no completion in time
            ├── ProviderUpstreamError    upstream 5xx, dropped connection, mid-stream error
            ├── ProviderTruncatedError   stream ended without the provider's end marker
            ├── ProviderCancelledError   upstream ended the work for good (canceled prediction)
            └── ProviderProtocolError    an answer no stream can come from: a redirect (never
                                         followed), or a 200 that is not an event stream

Every error's ``str()`` is a clean message safe to show a client: no secrets, no traces.
HTTP status mapping lives in exactly one place: ``flowserve.http.errors``.
"""

from __future__ import annotations

from typing import Any


class FlowserveError(Exception):
    """Base of every error flowserve raises on purpose."""

    error_type = "flowserve_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(FlowserveError):
    error_type = "config_error"


class SchemaError(ConfigError):
    """The database was made by another flowserve version; the message names what to run."""

    error_type = "schema_error"


class FlowValidationError(FlowserveError):
    """A flow definition is invalid. ``problems`` lists each (location, message)."""

    error_type = "flow_validation_error"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in problems))


class NotFoundError(FlowserveError):
    error_type = "not_found"


class AuthError(FlowserveError):
    error_type = "unauthorized"


class ForbiddenError(AuthError):
    error_type = "forbidden"


class InputError(FlowserveError):
    """Invalid request input. ``loc`` follows FastAPI's ``detail[].loc`` convention."""

    error_type = "invalid_input"

    def __init__(self, message: str, loc: tuple[str | int, ...] = ("body",)) -> None:
        super().__init__(message)
        self.loc = loc


class ParameterError(InputError):
    """Path or query parameters are invalid: each problem is (loc, msg, type), in FastAPI's
    and pydantic's terms (``loc`` like ``("query", "version")``)."""

    error_type = "invalid_parameters"

    def __init__(self, problems: list[tuple[tuple[str, ...], str, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(loc)}: {msg}" for loc, msg, _ in problems))
        self.problems = problems


class PayloadTooLargeError(InputError):
    error_type = "payload_too_large"


class BadFileError(InputError):
    """An uploaded file (its ``file`` part) is missing, empty, or cannot be read as the type
    it claims: ``error_type`` says which (``missing``, ``empty_file``, ``corrupt_file``)."""

    error_type = "corrupt_file"

    def __init__(self, message: str, kind: str = "corrupt_file") -> None:
        super().__init__(message, ("body", "file"))
        self.error_type = kind


class UnsupportedMediaTypeError(InputError):
    """An uploaded file of a type no parser reads (by its bytes, then its extension)."""

    error_type = "unsupported_media_type"


class LimitError(FlowserveError):
    error_type = "rate_limited"

    def __init__(self, message: str, retry_after: float, status: int = 429) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class RunTimeoutError(FlowserveError):
    """The run as a whole took too long, or produced nothing for too long. Not a node's
    fault, so it names no node."""

    error_type = "timeout"
    node_id: str | None = None


class APIError(FlowserveError):
    """Raised by :mod:`flowserve.client` for an error answer: ``status`` is the HTTP status."""

    error_type = "api_error"

    def __init__(
        self, message: str, status: int | None, detail: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class RunFailedError(APIError):
    error_type = "run_failed"

    def __init__(
        self,
        message: str,
        run_id: str | None = None,
        node_id: str | None = None,
        outputs: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=None)
        self.run_id = run_id
        self.node_id = node_id
        self.outputs = outputs or {}


class NodeError(FlowserveError):
    """A node failed. The message names the node so the user knows where to look."""

    error_type = "node_error"

    def __init__(self, message: str, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id

    def __str__(self) -> str:
        return f"node {self.node_id}: {self.message}" if self.node_id else self.message


class OutputTooLargeError(NodeError):
    """A node's output (or rendered prompt), or all the text of the run, went over the
    server's limit (settings ``max_node_chars``, ``max_run_chars``)."""

    error_type = "output_too_large"


class KnowledgeBaseNotFoundError(NodeError):
    """A knowledge base a ``knowledge_base`` node names is gone (deleted after the flow was
    published): the run fails naming the node."""

    error_type = "knowledge_base_not_found"


class ProviderError(NodeError):
    """Raised by provider adapters; the runner fills in ``node_id``."""

    error_type = "provider_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        node_id: str | None = None,
    ) -> None:
        super().__init__(message, node_id)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"node {self.node_id}" if self.node_id else ""
        if self.provider:
            where = f"{where} ({self.provider})" if where else self.provider
        return f"{where}: {self.message}" if where else self.message

    def context(self) -> dict[str, Any]:
        return {"provider": self.provider, "status": self.status, "retry_after": self.retry_after}


class ProviderAuthError(ProviderError):
    error_type = "provider_auth_error"


class ProviderRateLimitError(ProviderError):
    error_type = "provider_rate_limited"
    retryable = True


class ProviderBadRequestError(ProviderError):
    error_type = "provider_bad_request"


class ProviderOverloadedError(ProviderError):
    error_type = "provider_overloaded"
    retryable = True


class ProviderTimeoutError(ProviderError):
    error_type = "provider_timeout"


class ProviderUpstreamError(ProviderError):
    error_type = "provider_upstream_error"
    retryable = True


class ProviderTruncatedError(ProviderError):
    error_type = "provider_truncated"


class ProviderCancelledError(ProviderError):
    """The upstream stopped the work itself (a Replicate prediction canceled, or ended for a
    reason we do not know). Final: a retry would start, and bill, the work again."""

    error_type = "provider_cancelled"


class ProviderProtocolError(ProviderError):
    """The upstream answered in a way no stream can come from: a redirect, which is never
    followed (it could carry the key to another host), or a 200 that is not an event
    stream. Asking again gets the same answer, so it is not retried."""

    error_type = "provider_protocol_error"
