"""The data a campaign trains and evaluates on."""

from __future__ import annotations


from pydantic import Field

from pipeline.spec.base import Strict


class DataSpec(Strict):
    shards: str = Field(description="directory with fineweb_train_*.bin / fineweb_val_*.bin shards")
    tokenizer: str = Field(description="sentencepiece .model file the shards were made with")
    val_tokens: int | None = Field(
        default=None, ge=2, description="evaluate on the first N val tokens only (quick runs); None = all"
    )
