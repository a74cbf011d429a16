"""The one exception tree of lmgauge.

Every error the library raises on purpose derives from ``LmgaugeError``; errors of
third-party libraries are translated at the boundary with ``raise ... from exc``.
Each message names the thing at fault and the fix.

    LmgaugeError
    ├── ConfigError                 bad input: a file, a setting, a value
    │   ├── UnknownModelError       a model label that is not in the catalog
    │   ├── UnknownQuantizationError
    │   └── ContextTooLargeError    a context beyond the model's maximum
    ├── PlanningError               memory planning and routing
    │   ├── DoesNotFitError         a model larger than the memory it must fit in
    │   └── NoFeasibleModelError    no candidate fits the memory given
    └── BatcherError                the request scheduler
        ├── QueueFullError          the bounded queue is full (as Ollama answers 503)
        └── BatcherClosedError      a request submitted to, or left in, a closed batcher
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
