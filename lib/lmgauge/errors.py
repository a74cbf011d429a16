"""The one exception tree of lmgauge.

Every error the library raises on purpose derives from ``LmgaugeError``; errors of
third-party libraries are translated at the boundary with ``raise ... from exc``.
Each message names the thing at fault and the fix.

    LmgaugeError
    ├── ConfigError                 bad input: a file, a setting, a value
    │   ├── UnknownModelError       a model label that is not in the catalog
    │   ├── UnknownQuantizationError
    │   └── ContextTooLargeError    a context beyond the model's maximum
    ├── InsufficientResourcesError  not enough disk or memory to build or run something
    ├── PlanningError               memory planning and routing
    │   ├── DoesNotFitError         a model larger than the memory it must fit in
    │   └── NoFeasibleModelError    no candidate fits the memory given
    ├── BatcherError                the request scheduler
    │   ├── QueueFullError          the bounded queue is full (as Ollama answers 503)
    │   └── BatcherClosedError      a request submitted to, or left in, a closed batcher
    └── BackendError                a server or engine failed to do what was asked
        ├── BackendUnavailableError cannot connect, or the engine is not installed
        ├── BackendTimeoutError     no answer (or no next token) within the timeout
        ├── ProtocolError           an answer that breaks the protocol (bad JSON, bad stream)
        ├── ServerError             an HTTP error status; the message has the body's first line
        ├── ModelNotFoundError      the server or the disk has no such model
        ├── ModelFileError          a model file that exists but cannot be loaded (corrupt)
        ├── OutOfMemoryError        the engine could not allocate what the model needs
        └── ServerStartError        a server lmgauge started exited or never became ready
"""

from __future__ import annotations


class LmgaugeError(Exception):
    """Base class of every error lmgauge raises on purpose."""


class ConfigError(LmgaugeError):
    """Bad input: a malformed file, an unknown setting, a value out of range."""


class UnknownModelError(ConfigError):
    """A model label that the catalog does not know."""


class UnknownQuantizationError(ConfigError):
    """A quantization name that the catalog does not know."""


class ContextTooLargeError(ConfigError):
    """A context length beyond what the model supports."""


class InsufficientResourcesError(LmgaugeError):
    """Not enough disk or memory for what was asked; checked before anything is written."""


class PlanningError(LmgaugeError):
    """Memory planning or model routing could not satisfy a request."""


class DoesNotFitError(PlanningError):
    """A model that cannot fit in the memory it has to fit in."""


class NoFeasibleModelError(PlanningError):
    """No candidate model fits the available memory."""


class BatcherError(LmgaugeError):
    """The request scheduler refused or dropped a request."""


class QueueFullError(BatcherError):
    """The batcher's bounded queue is full; the request was rejected at once."""


class BatcherClosedError(BatcherError):
    """The batcher is closed, or was closed while the request waited."""


class BackendError(LmgaugeError):
    """A server or an in-process engine failed to do what was asked."""


class BackendUnavailableError(BackendError):
    """The server cannot be reached, or the engine is not installed."""


class BackendTimeoutError(BackendError):
    """No answer, or no next token, within the timeout."""


class ProtocolError(BackendError):
    """An answer that breaks the protocol: invalid JSON, a malformed stream line."""


class ServerError(BackendError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ModelNotFoundError(BackendError):
    """The server, or the disk, has no such model."""


class ModelFileError(BackendError):
    """A model file that exists but cannot be loaded: truncated, corrupt, wrong format."""


class OutOfMemoryError(BackendError):
    """The engine could not allocate the memory the model needs."""


class ServerStartError(BackendError):
    """A server lmgauge started itself exited, could not be run, or did not answer its
    readiness probe in time; the message has the command and the last lines of its log."""
