"""Run configuration: strict pydantic models loaded from YAML.

Unknown keys are rejected; every problem in a file is reported at once, naming the key. `model` holds a model's
settings, `schema` the run's (datasets, stages, placement, cluster), `load` reading a file with CLI overrides,
`overrides` the address of every setting (`--set datasets.vqa.limit=2`).
"""

from evalfleet.config.dataset import DatasetConfig, FewShotConfig, FieldMap, FrameSettings
from evalfleet.config.load import flat_settings, load_config, parse_config
from evalfleet.config.model import DiffusionConfig, GenerationConfig, ModelConfig, ServerConfig
from evalfleet.config.overrides import OVERRIDE_OPTIONS, apply_overrides, option_overrides
from evalfleet.config.schema import ClusterConfig, JudgeParse, PlacementConfig, RunConfig, StageConfig

__all__ = [
    "OVERRIDE_OPTIONS",
    "ClusterConfig",
    "DatasetConfig",
    "DiffusionConfig",
    "FewShotConfig",
    "FieldMap",
    "FrameSettings",
    "GenerationConfig",
    "JudgeParse",
    "ModelConfig",
    "PlacementConfig",
    "RunConfig",
    "ServerConfig",
    "StageConfig",
    "apply_overrides",
    "flat_settings",
    "load_config",
    "option_overrides",
    "parse_config",
]
