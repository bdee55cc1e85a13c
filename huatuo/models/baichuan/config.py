"""The configuration of a Baichuan2 model: reads the released ``config.json`` files unchanged."""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

PositionEmbedding = Literal["rope", "alibi"]


@strict
class BaichuanConfig(PreTrainedConfig):
    """Configuration of a Baichuan2 model; reads the released ``config.json`` files unchanged.

    ``position_embedding`` is huatuo's own key. The released files do not say which scheme they use: the 7B config
    has ``max_position_embeddings`` and uses RoPE, the 13B config has only ``model_max_length`` and uses ALiBi, so
    when the key is absent it is inferred from that difference.
    """

    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 125696
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int | None = None
    model_max_length: int = 4096
    position_embedding: str | None = None
    rope_theta: float | int = 10000.0
    initializer_range: float | int = 0.02
    rms_norm_eps: float | int = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    z_loss_weight: float | int = 0.0

    def __post_init__(self, **kwargs) -> None:
        if self.position_embedding is None:
            self.position_embedding = "rope" if self.max_position_embeddings is not None else "alibi"
        if self.position_embedding == "rope" and self.max_position_embeddings is None:
            self.max_position_embeddings = self.model_max_length
        # Saved folders point at the original .py files, which are not there after save_pretrained and need the
        # remote code this class replaces: drop the pointer so nothing tries to fetch it.
        kwargs.pop("auto_map", None)
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Reject configs the model cannot be built from (called by ``@strict``)."""
        if self.position_embedding not in ("rope", "alibi"):
            raise ValueError(f"position_embedding={self.position_embedding!r}: use 'rope' (7B) or 'alibi' (13B)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        """Baichuan2 has no grouped-query attention (read by transformers' cache and by ``huatuo.training.plan``)."""
        return self.num_attention_heads
