"""The AutoLabelJob API (group ``autolabel.dev``, version ``v1alpha1``): the one source of truth.

The CRD in ``crds/`` is generated from these models (``make crds``, :mod:`autolabel.crd`); the operator
and the worker both read resources through them. Field names are camelCase on the wire and snake_case in
Python. Rules that span fields are written as CEL (``x-kubernetes-validations``) so that the API server
itself rejects bad specs; the same rules are mirrored in :meth:`AutoLabelJobSpec.check_cross_field_rules`
for manifests that never reach an API server (``autolabel run --local``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "autolabel.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AutoLabelJob"
PLURAL = "autolabeljobs"
SINGULAR = "autolabeljob"
SHORT_NAMES = ["alj"]

MAX_PRELABELING_NODES = 5
PRETRAINED_ONLY_DETECTION = "spec.activeLearning.pretrainedWeights is only used when task is ObjectDetection"
MIRROR_ONLY_CLASSIFICATION = (
    "spec.activeLearning.mirrorImages is only used when task is ImageClassification (the detector never mirrors)"
)
MIN_CONFIDENCE_ONLY_CLASSIFICATION = (
    "spec.activeLearning.minConfidence is only used when task is ImageClassification "
    "(a detection result shows no image confidence to compare it with)"
)
SECOND_OPINION_ONLY_CLASSIFICATION = (
    "spec.activeLearning.secondOpinion is only used when task is ImageClassification "
    "(the detector asks no second opinion)"
)
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+"
S3_PREFIX_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
"""A bucket, or a folder in it. Local paths are for ``autolabel run --local`` only, which never reaches an
API server: the CRD refuses them, so the operator never reads or writes its own filesystem for a user."""


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True)

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Task(StrEnum):
    IMAGE_CLASSIFICATION = "ImageClassification"
    OBJECT_DETECTION = "ObjectDetection"


class Mode(StrEnum):
    ACTIVE_LEARNING = "ActiveLearning"
    PRE_LABELING = "PreLabeling"


class MirrorImages(StrEnum):
    AUTO = "Auto"
    """Images of 32 px and more, unless mirrored, the labeled images are farther from their class or the unlabeled
    images from one another."""
    ALWAYS = "Always"
    NEVER = "Never"


class SecondOpinionMode(StrEnum):
    AUTO = "Auto"
    """Where texture statistics tell the labeled images' classes apart well enough (cross-validated)."""
    NEVER = "Never"


class Algorithm(StrEnum):
    FAST = "Fast"
    """Supervised training on the labeled images only."""
    PRECISE = "Precise"
    """Semi-supervised training that also learns from the unlabeled images."""


class AlphaPolicy(StrEnum):
    CONVERT = "Convert"
    FAIL = "Fail"


class Phase(StrEnum):
    PENDING = "Pending"
    WAITING = "Waiting"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


# --------------------------------------------------------------------------------------------- spec


class DatasetSpec(ApiModel):
    manifest: str = Field(
        description="URI of the dataset's ModelArts-style JSON Lines manifest (s3://bucket/key). "
        "`autolabel run --local` also accepts a local path.",
        json_schema_extra={"pattern": S3_URI_PATTERN, "minLength": 6},
    )


class SecretReference(ApiModel):
    name: str = Field(
        description="Secret in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
        min_length=1,
        max_length=253,
    )


class StorageSpec(ApiModel):
    endpoint: str | None = Field(
        default=None, description="S3-compatible endpoint URL (AWS S3, OBS, MinIO). Default: operator's."
    )
    region: str | None = Field(default=None, description="Region of the bucket. Default: operator's.")
    secret_ref: SecretReference | None = Field(
        default=None, description="Credentials for the store. Default: the operator's configured secret."
    )


class ActiveLearningSpec(ApiModel):
    algorithm: Algorithm = Field(
        default=Algorithm.FAST,
        description="Fast: train on labeled images only. Precise: semi-supervised, also uses unlabeled images.",
    )
    target_precision: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="The precision the calibration aims for among auto-labels (predictions not flagged hard). "
        "Thresholds are set from held-out predictions on the labeled images, with a safety margin; the "
        "precision reached is an estimate (status.result.estimatedPrecision), certified only when "
        "status.result.targetVerifiable is true (enough labeled images for 95% confidence).",
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="ImageClassification: no image is auto-labeled whose own confidence is below this, whatever "
        "targetPrecision allows. targetPrecision is met on average: images a little less sure ride on surer "
        "ones, which is right only if the surest confidences are not too high; this floor is a margin against "
        'that, paid for in coverage (docs/datasets.md, "A floor under each auto-label"). Default: none.',
    )
    time_budget_seconds: int | None = Field(
        default=None, ge=10, description="Upper bound on training time. Default: the worker's (10 minutes)."
    )
    seed: int = Field(default=0, ge=0, description="Random seed; runs on CPU are deterministic for a seed.")
    mirror_images: MirrorImages = Field(
        default=MirrorImages.AUTO,
        description="ImageClassification: train (and check predictions) with left-right mirror images. Auto: "
        "for images of 32 px and more, unless mirrored, the labeled images are farther from their class or "
        "the unlabeled images from one another "
        "(the results' summary.json says what was decided, training.mirrorImages). Never: text, digits, anything whose "
        "mirror image is another class or none. Always: photographs.",
    )
    second_opinion: SecondOpinionMode = Field(
        default=SecondOpinionMode.AUTO,
        description="ImageClassification: a second model of another kind (texture statistics and a logistic "
        "regression, fitted on the same labeled images) makes an image hard (reason 31) where it gives the "
        "predicted class less than half the chance probability; where it gives it at least 0.75, the test-time "
        "views and the distance check do not make the image hard. Auto: only where its cross-validated accuracy "
        "on the labeled images shows it skilled "
        "(textures, photographs; not letters or digits; summary.json's secondOpinion says). Never: no second "
        'opinion, more auto-labels at a higher risk (docs/datasets.md, "A second opinion").',
    )
    pretrained_weights: str | None = Field(
        default=None,
        description="ObjectDetection: s3:// URI of a torchvision state_dict for the worker's detector or its "
        "backbone, to start training from. Never downloaded, never required. "
        "`autolabel run --local` also accepts a local path.",
        min_length=1,
        json_schema_extra={"pattern": S3_URI_PATTERN},
    )


class ModelReference(ApiModel):
    uri: str = Field(
        description="s3:// URI of the model: a folder or TorchScript file written by an earlier job's "
        "`model/` output, or a user's own TorchScript model with its labels.json beside it. "
        "`autolabel run --local` also accepts a local path.",
        min_length=1,
        json_schema_extra={"pattern": S3_URI_PATTERN},
    )
    version: str | None = Field(default=None, description="Free-form version, recorded in the results.")


class PreLabelingSpec(ApiModel):
    model: ModelReference = Field(description="The model that proposes labels.")


class ResourcesSpec(ApiModel):
    flavor: str | None = Field(
        default=None,
        description="Entry of the operator's flavor catalogue (resources, nodeSelector, tolerations). "
        "Default: the catalogue's default flavor.",
        min_length=1,
        max_length=63,
    )
    compute_nodes: int = Field(
        default=1,
        ge=1,
        le=MAX_PRELABELING_NODES,
        description="Worker pods. ActiveLearning: exactly 1. PreLabeling: 1 to 5 shards.",
    )


class ImagePolicySpec(ApiModel):
    alpha: AlphaPolicy = Field(
        default=AlphaPolicy.CONVERT,
        description="Images with transparency (RGBA, LA, palette with alpha): Convert to RGB, or Fail the job.",
    )
    max_unreadable_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The job fails if more than this share of images cannot be decoded; fewer are skipped "
        "and listed in summary.json.",
    )


class AutoLabelJobSpec(ApiModel):
    task: Task = Field(description="ImageClassification or ObjectDetection. Immutable.")
    mode: Mode = Field(description="ActiveLearning or PreLabeling. Immutable.")
    dataset: DatasetSpec = Field(description="The dataset to label. Immutable.")
    storage: StorageSpec | None = Field(default=None, description="Object storage; default: operator's.")
    output: str | None = Field(
        default=None,
        description="Prefix for results (s3://bucket/prefix/); each job writes under "
        "<output>/<job name>-<short uid>/. Default: an `autolabel/` folder beside the manifest. "
        "`autolabel run --local` also accepts a local path.",
        json_schema_extra={"pattern": S3_PREFIX_PATTERN},
    )
    active_learning: ActiveLearningSpec | None = Field(
        default_factory=ActiveLearningSpec, description="Settings for mode ActiveLearning."
    )
    pre_labeling: PreLabelingSpec | None = Field(default=None, description="Required exactly when mode is PreLabeling.")
    images: ImagePolicySpec = Field(
        default_factory=ImagePolicySpec, description="How unusual or broken images are handled."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute for the workers.")
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue; the Job is created suspended for Kueue to admit."
    )
    suspend: bool = Field(default=False, description="true stops the workers and frees the dataset lock.")
    active_deadline_seconds: int = Field(default=86400, ge=60, description="Wall-clock limit of the worker Job.")
    ttl_seconds_after_finished: int = Field(
        default=604800, ge=0, description="The finished worker Job is deleted after this long."
    )

    def cross_field_errors(self) -> list[str]:
        """The rules the CRD states in CEL, checked in Python (for manifests run without a cluster)."""
        errors = []
        if self.mode == Mode.ACTIVE_LEARNING and self.resources.compute_nodes != 1:
            errors.append("spec.resources.computeNodes must be 1 when mode is ActiveLearning")
        if (self.pre_labeling is not None) != (self.mode == Mode.PRE_LABELING):
            errors.append("spec.preLabeling is required when mode is PreLabeling and not allowed otherwise")
        if self.task != Task.OBJECT_DETECTION and self.active_learning and self.active_learning.pretrained_weights:
            errors.append(PRETRAINED_ONLY_DETECTION)
        if (
            self.task != Task.IMAGE_CLASSIFICATION
            and self.active_learning
            and self.active_learning.mirror_images != MirrorImages.AUTO
        ):
            errors.append(MIRROR_ONLY_CLASSIFICATION)
        if (
            self.task != Task.IMAGE_CLASSIFICATION
            and self.active_learning
            and self.active_learning.min_confidence is not None
        ):
            errors.append(MIN_CONFIDENCE_ONLY_CLASSIFICATION)
        if (
            self.task != Task.IMAGE_CLASSIFICATION
            and self.active_learning
            and self.active_learning.second_opinion != SecondOpinionMode.AUTO
        ):
            errors.append(SECOND_OPINION_ONLY_CLASSIFICATION)
        return errors

    @model_validator(mode="after")
    def check_cross_field_rules(self) -> AutoLabelJobSpec:
        errors = self.cross_field_errors()
        if errors:
            raise ValueError("; ".join(errors))
        return self


# ------------------------------------------------------------------------------------------- status


class Condition(ApiModel):
    """The shape of metav1.Condition."""

    type: str = Field(max_length=316, description="CamelCase condition type, e.g. LockAcquired.")
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    reason: str = Field(
        max_length=1024,
        min_length=1,
        description="CamelCase reason, e.g. TooFewLabels.",
        json_schema_extra={"pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
    )
    message: str = Field(max_length=32768, description="Human-readable details.")


class Progress(ApiModel):
    stage: str | None = Field(default=None, description="Worker stage, e.g. train, calibrate, inference.")
    processed: int | None = Field(default=None, ge=0)
    total: int | None = Field(default=None, ge=0)
    percent: int | None = Field(default=None, ge=0, le=100)


class Result(ApiModel):
    uri: str | None = Field(default=None, description="Where the results were written.")
    total: int | None = Field(default=None, ge=0, description="Images that were unlabeled.")
    auto_labeled: int | None = Field(default=None, ge=0, description="Predictions not flagged hard.")
    hard_examples: int | None = Field(default=None, ge=0, description="Predictions flagged for people.")
    estimated_precision: float | None = Field(default=None, description="Of the auto-labeled predictions.")
    target_verifiable: bool | None = Field(
        default=None, description="false when the labeled data is too small to certify the target."
    )
    notes: list[str] | None = Field(
        default=None,
        max_length=5,
        description="What the worker says the user should know (at most 5, from summary.json notes), e.g. "
        "that Precise fell back to the Fast models, with the numbers.",
    )


class AutoLabelJobStatus(ApiModel):
    phase: Phase | None = Field(default=None, description="For display only; logic reads conditions.")
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, ge=0)
    job_name: str | None = Field(default=None, description="The batch/v1 Job running the workers.")
    lease_name: str | None = Field(default=None, description="The dataset lock (coordination.k8s.io Lease).")
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    progress: Progress | None = None
    result: Result | None = None
    message: str | None = None


class ObjectMeta(BaseModel):
    """The part of metadata this project reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")


class AutoLabelJob(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    api_version: Literal["autolabel.dev/v1alpha1"] = Field(default="autolabel.dev/v1alpha1", alias="apiVersion")
    kind: Literal["AutoLabelJob"] = "AutoLabelJob"
    metadata: ObjectMeta
    spec: AutoLabelJobSpec
    status: AutoLabelJobStatus | None = None

    @property
    def short_uid(self) -> str:
        return (self.metadata.uid or "local").replace("-", "")[:8]

    @property
    def run_name(self) -> str:
        """``<job name>-<short uid>``, the name shortened so that the whole fits in 63 characters: the
        folder of this job's results under the output prefix, and the name of its worker Job (which ends
        up in the pods' ``batch.kubernetes.io/job-name`` label, at most 63 characters)."""
        return truncated_name(self.metadata.name, f"-{self.short_uid}")


MAX_LABEL_VALUE = 63


def truncated_name(name: str, suffix: str) -> str:
    """``name + suffix`` in at most 63 characters: the name is cut (and stripped of a trailing ``-``/``.``)."""
    return f"{name[: MAX_LABEL_VALUE - len(suffix)].rstrip('-.')}{suffix}"


def default_output_prefix(manifest_uri: str) -> str:
    """An ``autolabel/`` folder beside the manifest (the documented default for ``spec.output``, docs/operator.md)."""
    folder = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    return f"{folder}/autolabel/"


def results_prefix(job: AutoLabelJob) -> str:
    """Where this job writes: ``<output>/<job name>-<short uid>/``; never another job's folder."""
    output = job.spec.output or default_output_prefix(job.spec.dataset.manifest)
    return f"{output.rstrip('/')}/{job.run_name}/"
