"""Model wire models, field for field as the seeds define them (seed 002 holds the OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import ConfigDict, Field, field_validator, model_validator

from modelyard.adapters.schemas import Adapter, FinetuningType
from modelyard.workspaces.schemas import EntityName, Reference, RequestModel, WireModel


class MoEConfig(RequestModel):
    """Mixture of Experts configuration."""

    num_experts: int = Field(description="Total number of routed experts (sharded by EP)")
    num_experts_per_tok: int = Field(description="Number of experts activated per token (top-k routing)")
    num_expert_layers: int = Field(description="Number of layers with MoE")
    expert_ffn_size: int | None = Field(default=None, description="FFN size for experts, if it differs")
    num_shared_experts: int = Field(default=0, description="Number of shared experts")


class MambaConfig(RequestModel):
    """Mamba/State Space Model configuration."""

    is_hybrid: bool
    num_mamba_layers: int
    num_attention_layers: int = 0
    num_mlp_layers: int = 0
    state_size: int = 16
    conv_kernel: int = 4


class SlidingWindowConfig(RequestModel):
    """Sliding window attention configuration."""

    window_size: int = Field(description="Sliding window size (attends to last N tokens)")


class LinearLayerSpec(RequestModel):
    """Specification for a single linear layer in the model."""

    name: str = Field(description="Module name (e.g., 'model.layers.0.self_attn.q_proj')")
    in_features: int
    out_features: int


class ToolCallConfig(RequestModel):
    """Configuration for tool calling support in deployments."""

    tool_call_parser: str | None = None
    tool_call_plugin: str | None = None
    auto_tool_choice: bool | None = None


class ModelSpec(RequestModel):
    """Detailed specification for a model."""

    context_size: int | None = None
    num_virtual_tokens: int | None = None
    is_chat: bool | None = None
    is_embedding_model: bool = False
    checkpoint_model_name: str
    family: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    tied_embeddings: bool
    gated_mlp: bool
    base_num_parameters: int
    precision: str
    moe_config: MoEConfig | None = None
    mamba_config: MambaConfig | None = None
    sliding_window_config: SlidingWindowConfig | None = None
    linear_layers: list[LinearLayerSpec] | None = None
    chat_template: str | None = None
    tool_call_config: ToolCallConfig | None = None
    minimum_gpus_all_weights: int | None = None
    minimum_gpus_lora: int | None = None


class APIEndpointData(RequestModel):
    """Data about an inference endpoint. ``api_key`` is write-only: responses mask it."""

    url: str | None = Field(default=None, json_schema_extra={"format": "uri"}, description="Endpoint URL")
    model_id: str | None = None
    api_key: str | None = None
    format: str | None = Field(default=None, description="API format (e.g., openai, nvidia)")

    @field_validator("url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError("url must be an absolute http(s) URL, e.g. https://host/v1")
        return value


class BackendFormat(StrEnum):
    """Inference backend API wire formats understood by the gateway."""

    OPENAI_CHAT = "OPENAI_CHAT"
    ANTHROPIC_MESSAGES = "ANTHROPIC_MESSAGES"


class InferenceParams(RequestModel):
    """Parameters for model inference; extra fields are passed to the inference request as they are."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None


class PromptData(RequestModel):
    """Configuration for prompt engineering."""

    system_prompt: str | None = None
    icl_few_shot_examples: str | None = None
    inference_params: InferenceParams | None = None
    system_prompt_template: str | None = None


Project = Annotated[str, Field(max_length=255, pattern=r"^[\w\-./]+$")]
Description = Annotated[str, Field(max_length=1000)]


class _ModelFields(RequestModel):
    """Fields a client may set on a model, on create and on patch."""

    project: Project | None = None
    description: Description | None = None
    spec: ModelSpec | None = None
    finetuning_type: FinetuningType | None = None
    fileset: Reference | None = Field(default=None, description="{workspace}/{fileset_name}")
    base_model: Annotated[str, Field(max_length=255)] | None = None
    api_endpoint: APIEndpointData | None = None
    backend_format: BackendFormat | None = None
    prompt: PromptData | None = None
    custom_fields: dict[str, Any] | None = None
    ownership: dict[str, Any] | None = None
    model_providers: list[str] | None = None


class CreateModelEntityRequest(_ModelFields):
    """Request model for creating a Model Entity."""

    name: EntityName
    trust_remote_code: bool = False


class UpdateModelEntityRequest(_ModelFields):
    """PATCH body: omitted fields keep their value, ``null`` clears an optional field."""

    trust_remote_code: bool | None = None

    @model_validator(mode="after")
    def _trust_not_null(self) -> UpdateModelEntityRequest:
        if "trust_remote_code" in self.model_fields_set and self.trust_remote_code is None:
            raise ValueError("'trust_remote_code' cannot be null; send true or false")
        return self


class ModelEntity(WireModel):
    """A model registered in a workspace."""

    id: str
    name: str
    workspace: str
    project: str | None = None
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    spec: ModelSpec | None = None
    finetuning_type: FinetuningType | None = None
    fileset: str | None = None
    trust_remote_code: bool = False
    base_model: str | None = None
    api_endpoint: APIEndpointData | None = None
    backend_format: BackendFormat | None = None
    adapters: list[Adapter] = Field(default_factory=list)
    prompt: PromptData | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    ownership: dict[str, Any] | None = None
    model_providers: list[str] = Field(default_factory=list)
