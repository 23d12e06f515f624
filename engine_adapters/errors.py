"""The one error tree, shared by the engine adapters and the gateway.

    GatewayError                      500 api_error (message hidden from the client)
    ├── InvalidRequest                400 invalid_request_error
    │   └── ContextLengthExceeded     400 code=context_length_exceeded
    ├── AuthenticationFailed          401 code=invalid_api_key
    ├── PermissionDenied              403 code=permission_denied     (a key's scope lacks the path's group)
    ├── NotFound                      404
    │   └── ModelNotFound             404 code=model_not_found
    ├── MethodNotAllowed              405 code=method_not_allowed     (the answer carries `Allow`)
    ├── RequestTimeout                408 code=request_timeout       (the body came too slowly)
    ├── PayloadTooLarge               413
    ├── RateLimited                   429 code=rate_limit_exceeded      (retryable)
    ├── HeaderTooLarge                431 code=request_header_fields_too_large  (answered by the HTTP protocol)
    ├── QuotaExceeded                 429 type=code=insufficient_quota  (a key's token budget is spent)
    └── EngineUnavailable             503 code=engine_unavailable      (retryable)
        └── UnexpectedAnswer          503 code=engine_unavailable      (not retried: an instance's answer of the
                                                                        wrong kind, which it would give again)

The engine adapters raise these and the gateway raises them too, so the tree lives here, below both;
gateway.errors is the one place where an error becomes a body (OpenAI's, or Anthropic's on its paths).
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None
    retryable = False
    # Only a subclass's message is written for the client; an unexpected error
    # gets a generic text and its details stay in the log.
    public_message = False

    def __init__(
        self,
        message: str = "",
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.param = param
        self.retry_after_s = retry_after_s  # a 429 or 503's Retry-After, where 1 s would be wrong
        if code is not None:
            self.code = code


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    public_message = True


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    public_message = True


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"
    public_message = True


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    public_message = True


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    public_message = True


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    public_message = True


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    public_message = True


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True
    public_message = True


class HeaderTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"
    public_message = True


class QuotaExceeded(GatewayError):
    """OpenAI's answer when an account's quota is spent: not retryable until the period resets."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    public_message = True


class EngineUnavailable(GatewayError):
    status = 503
    type = "service_unavailable_error"
    code = "engine_unavailable"
    retryable = True
    public_message = True


class UnexpectedAnswer(EngineUnavailable):
    """An instance answered with something else than asked (a whole JSON answer to a stream request): an instance
    failure, which trying again would only repeat."""

    retryable = False


# Each status's error is the class that declares it: the tree stays the one source of truth.
_BY_STATUS: dict[int, type[GatewayError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest,
        AuthenticationFailed,
        PermissionDenied,
        NotFound,
        RequestTimeout,
        PayloadTooLarge,
        RateLimited,
        EngineUnavailable,
    )
}


def status_error(status: int, message: str, *, param: str | None = None) -> GatewayError:
    """Build the error of our tree that an HTTP status stands for (for upstream and framework errors)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        return InvalidRequest(message, param=param) if 400 <= status < 500 else GatewayError(message)
    return cls(message, param=param)
