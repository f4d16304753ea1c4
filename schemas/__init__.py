"""The contracts between stages: records, manifests, stage and recipe configs. Pydantic models only, no I/O."""

from pydantic import BaseModel

from schemas.base import Config, Record, canonical_json, config_hash, sha256_hex
from schemas.configs import (
    DEMO_PASSAGES,
    EVAL_SUITES,
    STAGE_CONFIGS,
    AnnotateConfig,
    CGConfig,
    Endpoint,
    EvalConfig,
    GRPOConfig,
    ImportConfig,
    JudgeConfig,
    MixConfig,
    Parallelism,
    PipelineConfig,
    PublishConfig,
    SampleConfig,
    SFTConfig,
    TrainConfig,
    TransformersRunner,
    ValidateConfig,
    VLLMLaunch,
)
from schemas.manifest import MANIFEST_FILE, FileEntry, InputRef, Manifest, ManifestKind, output_address
from schemas.recipes import (
    RECIPES,
    Ablation,
    CrossLingual,
    LowResource,
    RecipeEval,
    ReportConfig,
    Supervised,
    ZeroShot,
)
from schemas.records import (
    CoTRecord,
    Entity,
    Generation,
    JudgeVerdict,
    Mention,
    NERExample,
    Passage,
    Prediction,
    Rejection,
    RejectReason,
    SamplingParams,
)
from schemas.rollout import RolloutConfig
from schemas.service import ExtractRequest, ExtractResponse, ServeConfig

RECORD_TYPES: dict[str, type[Record]] = {
    m.__name__: m for m in (Passage, NERExample, CoTRecord, JudgeVerdict, Prediction, Rejection)
}
"""Record models that dataset files hold, by the name a manifest's ``FileEntry.record_type`` uses."""

EXPORTED: dict[str, type[BaseModel]] = {
    **{m.__name__: m for m in (Entity, Mention, Generation, SamplingParams, Manifest)},
    **RECORD_TYPES,
    **{m.__name__: m for m in STAGE_CONFIGS.values()},
    **{m.__name__: m for m in (*RECIPES.values(), RecipeEval, ReportConfig)},
    **{m.__name__: m for m in (ExtractRequest, ExtractResponse, ServeConfig, RolloutConfig)},
}
"""Every model ``rner schemas export`` writes a JSON Schema for."""

__all__ = [
    "DEMO_PASSAGES",
    "EVAL_SUITES",
    "EXPORTED",
    "MANIFEST_FILE",
    "RECIPES",
    "RECORD_TYPES",
    "STAGE_CONFIGS",
    "Ablation",
    "AnnotateConfig",
    "CGConfig",
    "CoTRecord",
    "Config",
    "CrossLingual",
    "Endpoint",
    "Entity",
    "EvalConfig",
    "FileEntry",
    "GRPOConfig",
    "Generation",
    "ImportConfig",
    "InputRef",
    "JudgeConfig",
    "JudgeVerdict",
    "LowResource",
    "Manifest",
    "ManifestKind",
    "Mention",
    "MixConfig",
    "NERExample",
    "Parallelism",
    "Passage",
    "PipelineConfig",
    "Prediction",
    "PublishConfig",
    "RecipeEval",
    "Record",
    "RejectReason",
    "Rejection",
    "ReportConfig",
    "SFTConfig",
    "SampleConfig",
    "SamplingParams",
    "Supervised",
    "TrainConfig",
    "TransformersRunner",
    "VLLMLaunch",
    "ValidateConfig",
    "ZeroShot",
    "canonical_json",
    "config_hash",
    "output_address",
    "sha256_hex",
]
