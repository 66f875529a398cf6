"""Typed views of what training reads off a transformers classifier.

Training takes its models as ``nn.Module`` (any supported HF classifier). transformers
declares the config fields per model class (``BertConfig.num_hidden_layers`` ...) and the
model's ``config`` / ``save_pretrained`` on ``PreTrainedModel``, so on an ``nn.Module`` mypy
sees them through ``Module.__getattr__`` as ``Tensor | Module``. These Protocols name the
few members training uses; :func:`hf_model` / :func:`hf_config` give that view, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol, cast

from torch import nn


class HFConfig(Protocol):
    """The ``PretrainedConfig`` fields training reads (every supported model class has them)."""

    @property
    def num_hidden_layers(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def num_attention_heads(self) -> int: ...

    @property
    def id2label(self) -> Mapping[int, str]: ...


class HFModel(Protocol):
    """A transformers classifier as training uses it: its config and ``save_pretrained``."""

    @property
    def config(self) -> HFConfig: ...

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Any: ...


def hf_model(model: nn.Module) -> HFModel:
    """``model`` itself, typed as the transformers model it is (no check, no copy)."""
    return cast(HFModel, model)  # transformers' per-class attributes are invisible on nn.Module


def hf_config(model: nn.Module) -> HFConfig:
    """``model.config``, typed."""
    return hf_model(model).config
