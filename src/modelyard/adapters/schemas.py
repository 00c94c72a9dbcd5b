"""Adapter wire models (seeds 000 and 001), plus ``FinetuningType`` and ``Lora`` which models share."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from modelyard.workspaces.schemas import EntityName, ModelReference, Reference, RequestModel, WireModel


class FinetuningType(StrEnum):
    """Finetuning types."""

    lora_merged = "lora_merged"
    all_weights = "all_weights"
    last_layer = "last_layer"
    top_layers = "top_layers"
    gradual_unfreezing = "gradual_unfreezing"
    bias_only = "bias_only"
    attention_only = "attention_only"
    lora = "lora"
    qlora = "qlora"
    adalora = "adalora"
    dora = "dora"
    lora_plus = "lora_plus"
    prompt_tuning = "prompt_tuning"
    prefix_tuning = "prefix_tuning"
    p_tuning = "p_tuning"
    p_tuning_v2 = "p_tuning_v2"
    soft_prompt = "soft_prompt"
    ppo = "ppo"
    dpo = "dpo"
    cdpo = "cdpo"
    ipo = "ipo"
    orpo = "orpo"
    kto = "kto"
    rrhf = "rrhf"
    grpo = "grpo"


class Lora(RequestModel):
    alpha: Annotated[int, Field(ge=1, description="Alpha scaling used for this adapter")] | None = None
    rank: Annotated[int, Field(ge=1, description="LoRA Rank")]


Description = Annotated[str, Field(max_length=1000, description="Optional description of the adapter")]


class CreateModelAdapterRequest(RequestModel):
    """Request body for nested Adapter creation. The base model comes from the URL path, not the body."""

    name: EntityName
    description: Description | None = None
    fileset: Reference = Field(description="Location where adapter files are stored: {workspace}/{fileset_name}")
    finetuning_type: FinetuningType
    enabled: bool = True
    lora_config: Lora | None = None


class CreateAdapterRequest(CreateModelAdapterRequest):
    """Create an adapter under the base model named in ``model`` (``name`` or ``workspace/name``)."""

    model: ModelReference = Field(description="Base model: {model_name} in the path workspace, or {workspace}/{model_name}")


class UpdateAdapterRequest(RequestModel):
    """PATCH body: omitted fields keep their value; ``null`` clears ``description`` or ``lora_config``."""

    description: Description | None = None
    enabled: bool | None = None
    fileset: Reference | None = None
    lora_config: Lora | None = None

    @model_validator(mode="after")
    def _required_fields_stay_set(self) -> UpdateAdapterRequest:
        for field in ("enabled", "fileset"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"'{field}' cannot be null; omit it to keep the current value")
        return self


class Adapter(WireModel):
    name: str = Field(description="Name of the adapter, unique in the workspace for all adapters")
    workspace: str
    description: str | None = None
    fileset: str
    finetuning_type: FinetuningType
    enabled: bool = True
    lora_config: Lora | None = None
    model: str | None = Field(default=None, description="Parent model entity reference: workspace/model_name")
    created_at: datetime | None = None
    updated_at: datetime | None = None
