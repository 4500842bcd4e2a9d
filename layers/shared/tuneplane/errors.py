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


class PlatformLimitExceeded(TuneplaneError):
    """A limit of the machine doing the work (e.g. the Validate Lambda's /tmp filling up), not an error in the data,
    stopped it. Retrying the same input on the same machine would fail the same way, so the state machine does not
    retry it; the uploader is not told to fix the data."""


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


class UnservableModel(TuneplaneError):
    """The model cannot be served by the configured target: refused before anything is deployed (e.g. a LoRA rank
    above the server's limit, an architecture Bedrock Custom Model Import does not take)."""


class EndpointDeployFailed(TuneplaneError):
    """SageMaker could not bring the endpoint (or the update) into service, or it did not within the time allowed."""


class SmokeTestFailed(TuneplaneError):
    """The deployed model did not answer the smoke test's chat request with a usable answer."""


class ModelNotReady(SmokeTestFailed):
    """Bedrock is still loading an imported model (``ModelNotReadyException``): a cold start that the AWS docs say
    can take minutes after an import or a quiet spell. Retried for longer than a wrong answer is."""


class ModelImportFailed(TuneplaneError):
    """A Bedrock Custom Model Import job failed, or did not finish within the time allowed."""


class DeployServiceError(TuneplaneError):
    """SageMaker, Bedrock, CloudWatch or Application Auto Scaling refused or failed a call; often transient."""


class UnsupportedBaseModel(BaseModelUnavailable):
    """A base model the training jobs cannot load as it is (``tuneplane stage-model`` refuses to copy it).

    Pickle weights (.bin/.pt), remote code (``auto_map``, *.py), missing or truncated safetensors shards, a
    config.json without ``model_type``: the jobs run with network isolation, ``trust_remote_code=False`` and
    ``use_safetensors=True``.
    """


class DestinationNotEmpty(TuneplaneError):
    """The S3 prefix a base model is staged to already holds objects, and replacing them was not asked for."""


class PermissionDenied(TuneplaneError):
    """AWS refused a read for lack of permission (AccessDenied and its kin), or no credentials were found.

    ``permission`` names the IAM action that the call needs, so the message can say what to ask for. Raised by the
    read-only adapters of `tuneplane doctor` (``adapters/account.py``).
    """

    def __init__(self, message: str, *, permission: str) -> None:
        super().__init__(message)
        self.permission = permission


class ServiceUnavailable(TuneplaneError):
    """An AWS service did not answer a read (no endpoint, throttling, a server error, an unexpected refusal).

    ``permission`` names the IAM action of the call, as for :class:`PermissionDenied`.
    """

    def __init__(self, message: str, *, permission: str) -> None:
        super().__init__(message)
        self.permission = permission


class RunSuperseded(TuneplaneError):
    """A newer upload of the same dataset started a run: this older one stops before training or deploying, so the
    newest upload's model is the one that serves. An outcome, not a failure."""


class DeploymentInProgress(TuneplaneError):
    """Another run of the same dataset holds the dataset's deployment lease: this run waits (the state machine
    retries) instead of colliding with that deployment on the same endpoint."""


class SameContent(TuneplaneError):
    """The upload has the same examples and settings as an earlier run that succeeded or is still running: nothing
    is trained again unless the sidecar asks for it (``rerun: true``). An outcome, not a failure."""


class CapacityUnavailable(TuneplaneError):
    """No training instance type the run may use had capacity or quota, after waiting as long as the stack allows
    (MaxCapacityWaitMinutes): the platform team raises the quota or adds instance types."""


class RunAlreadyEnded(TuneplaneError):
    """The run's outcome is recorded already (the execution was redriven after it ended, or after the reconciler
    recorded it): nothing runs again and nothing is recorded twice; a new upload starts a new run."""


class ForeignExecution(TuneplaneError):
    """The execution is not the one that began this run (an operator started a copy of its input by hand): it may
    neither run the run's stages nor record its outcome."""


class JudgeUnavailable(TuneplaneError):
    """The evaluation's judge model did not answer (throttling, a server error, a timeout): the state machine retries
    the grading pass, which resumes where it stopped."""


class GraderFailed(TuneplaneError):
    """A grader could not score the answers: the custom Lambda grader raised or answered something that is not one
    score in [0, 1] per item, or the judge refused the request (access denied, an unknown model). Retrying would
    fail the same way; the message names the grader and what it did."""
