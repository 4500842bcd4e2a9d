"""Every error the pipeline raises on purpose.

Each class name is the error name the state machine's ``Retry``/``Catch`` blocks match, so renaming a
class is a change to ``statemachines/pipeline.asl.json`` too.
"""


class TuneplaneError(Exception):
    """Base class: an expected failure with a message meant for the person who uploaded the data."""


class InvalidTrainingData(TuneplaneError):
    """The uploaded dataset was rejected by validation; the message summarises why."""


class InvalidConfiguration(TuneplaneError):
    """A setting (environment, sidecar file, option) is missing or malformed."""


class DatasetNotFound(TuneplaneError):
    """The dataset object or file does not exist (or the version is gone)."""


class BaseModelUnavailable(TuneplaneError):
    """The base model's tokenizer or chat template could not be read or is unusable."""


class StorageError(TuneplaneError):
    """S3 refused or failed a read or write; usually transient or a permissions problem."""


class RunAlreadyStarted(TuneplaneError):
    """An execution with this run's name exists already: a duplicate delivery of the same object version."""

    def __init__(self, execution_arn: str) -> None:
        super().__init__(f"run already started: {execution_arn}")
        self.execution_arn = execution_arn


class OrchestrationError(TuneplaneError):
    """Step Functions refused or failed a call (throttling, permissions, a missing state machine)."""


class SlackDeliveryFailed(TuneplaneError):
    """Slack did not accept a notification after the retries allowed (or refused it outright).

    Raised out of the Notify Lambda so that the asynchronous invocation fails and the event lands in its
    dead-letter queue. The message never contains the webhook URL: it is a secret.
    """

    def __init__(self, message: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status
