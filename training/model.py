"""ShiftRec's sequential model: a causal transformer over behaviour sequences (SASRec family)
that also sees the signals that carry interest shift.

Base: SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), trained
with full-softmax cross-entropy over the whole catalogue on every position and tied input/output
item embeddings (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better
than SASRec?", RecSys 2023). Added inputs, each of which can be switched off for the ablation:

- item attributes: the mean of the item's tag/category embeddings is added to its id
  embedding, on the input and (tied) on the output side, so items share strength through
  their attributes;
- behaviour type (view, cart, purchase, ...) embedding per event;
- time: an embedding of the log-bucketed gap since the previous event, and a learned per-head
  attention bias over the log-bucketed time between the query and each key event (a simplified
  TiSASRec, Li et al., WSDM 2020), so attention can learn how fast interest decays;
- item text (`use_text`, on by default): a fixed sentence-encoder vector of the item's title
  (`training.text`) through a learned projection, added like the attributes. Items that share
  words share strength (better on Beauty; the figures are in the README), and it is the part of an
  item's representation that crosses domains (UniSRec, Hou et al., KDD 2022, in its simplest
  form).

Items that never occur in the training events keep no id embedding (their row is masked to
zero), so a cold-start item is scored from its content alone instead of from an untrained row
that the softmax has pushed down.

Inputs are left-padded (B, L) int64 tensors: item indices (0 = padding), event types
(0 = padding) and unix-second timestamps. `loss()` is the training objective; `score()` is the
inference path that the ONNX export traces.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shared.model_package import N_EVENT_TYPES

NEG_INF = -1e9  # additive mask value; finite so that fully-masked rows cannot produce NaN


@dataclass
class ModelConfig:
    n_items: int = 0  # catalogue size, set from the data (item index 0 = padding)
    n_tags: int = 0  # tag vocabulary size, set from the data (tag index 0 = padding)
    n_event_types: int = N_EVENT_TYPES  # 0 padding, then shiftrec.v1.EventType
    max_len: int = 50  # events seen per user; the fixed ONNX input length
    dim: int = 128  # hidden size D (with text, 128 beat 64 on Beauty: README, The model)
    n_layers: int = 2
    n_heads: int = 1
    ffn_mult: int = 4  # feed-forward width = ffn_mult * D (4 beat SASRec's 1 on Beauty)
    dropout: float = 0.5  # heavy dropout suits Beauty-sized sparse data
    input_norm: bool = True  # LayerNorm over the summed input embeddings (as in FMLP-Rec/BSARec)
    n_time_buckets: int = 24  # 0 = no previous event; k >= 1: floor(log2(1 + minutes)) = k - 1
    use_tags: bool = True  # ablation switches: item attributes, behaviour type, time
    use_types: bool = True
    use_time: bool = True
    use_text: bool = True  # item text vectors (better on Beauty; cross-domain transfer; cold-start
    # items). Items without a title get the zero vector, so title-less data trains as without text
    text_dim: int = 384  # width of those vectors
    id_dropout: float = 0.0  # training: share of items whose id embedding is hidden per batch, so
    # that the content part alone learns to place an item (what a cold-start item has)
    loss: str = "ce"  # "ce": full softmax over the catalogue; "sampled": sampled softmax
    n_negatives: int = 2048  # uniform negatives shared by a batch when loss == "sampled"


def time_buckets(seconds: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Log2 buckets of non-negative durations: 1 + floor(log2(1 + minutes)), capped."""
    minutes = seconds.clamp(min=0).to(torch.float32) / 60.0
    bucket = torch.floor(torch.log(1.0 + minutes) / math.log(2.0)) + 1.0
    return bucket.clamp(max=n_buckets - 1).to(torch.int64)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # each (B, L, D)
        q = q.view(B, L, H, D // H).transpose(1, 2)  # (B, H, L, D/H)
        k = k.view(B, L, H, D // H).transpose(1, 2)
        v = v.view(B, L, H, D // H).transpose(1, 2)
        att = q @ k.transpose(-2, -1) / math.sqrt(D // H) + bias  # (B, H, L, L)
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim)
        self.out = nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out(self.drop(F.gelu(self.fc(x)))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.ffn(self.ln2(x))


class ShiftRec(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        item_tags: torch.Tensor,
        item_text: torch.Tensor | None = None,
        item_known: torch.Tensor | None = None,
    ) -> None:
        """Constants per item: `item_tags` (N+1, T) int64 tag indices, 0-padded; `item_text`
        (N+1, text_dim) float text vectors (when cfg.use_text); `item_known` (N+1,) bool, False
        for items absent from the training events (default: every item known)."""
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.item_emb = nn.Embedding(cfg.n_items + 1, D, padding_idx=0)
        known = torch.ones(cfg.n_items + 1, dtype=torch.bool) if item_known is None else item_known
        self.register_buffer("id_mask", known.to(torch.float32)[:, None].clone(), persistent=True)  # (N+1, 1)
        self.pos_emb = nn.Embedding(cfg.max_len, D)
        if cfg.use_tags:
            # mean of the item's tag embeddings; padding tags are left out of the mean
            self.tag_emb = nn.EmbeddingBag(cfg.n_tags + 1, D, mode="mean", padding_idx=0)
            self.register_buffer("item_tags", item_tags.clone(), persistent=True)  # (N+1, T)
        if cfg.use_text:
            if item_text is None or tuple(item_text.shape) != (cfg.n_items + 1, cfg.text_dim):
                raise ValueError(f"use_text needs item_text of shape ({cfg.n_items + 1}, {cfg.text_dim})")
            self.text_proj = nn.Linear(cfg.text_dim, D, bias=False)
            self.register_buffer("item_text", item_text.to(torch.float32).clone(), persistent=True)
        if cfg.use_types:
            self.type_emb = nn.Embedding(cfg.n_event_types, D, padding_idx=0)
        if cfg.use_time:
            self.gap_emb = nn.Embedding(cfg.n_time_buckets, D)
            self.time_bias = nn.Embedding(cfg.n_time_buckets, cfg.n_heads)
        self.emb_norm = nn.LayerNorm(D) if cfg.input_norm else nn.Identity()
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def item_table(self) -> torch.Tensor:
        """Every item's representation (N+1, D): id embedding (zero for items unseen in training)
        + mean tag embedding + projected text vector. Row 0 = 0."""
        mask = self.id_mask  # (N+1, 1)
        if self.training and self.cfg.id_dropout > 0:  # the same items on the input and output side
            mask = mask * (torch.rand_like(mask) >= self.cfg.id_dropout)
        table = self.item_emb.weight * mask  # (N+1, D)
        if self.cfg.use_tags:
            table = table + self.tag_emb(self.item_tags)  # (N+1, D)
        if self.cfg.use_text:
            table = table + self.text_proj(self.item_text)  # (N+1, D); row 0 stays 0 (no bias)
        return table

    def encode(
        self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor, table: torch.Tensor
    ) -> torch.Tensor:
        """Hidden states (B, L, D) for left-padded (B, L) inputs; position t sees events <= t."""
        L = items.shape[1]
        valid = items > 0  # (B, L)
        positions = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=items.device)
        x = table[items] + self.pos_emb(positions)  # (B, L, D); positions count back from the end
        if self.cfg.use_types:
            x = x + self.type_emb(types)
        idx = torch.arange(L, device=items.device)
        causal = idx[None, :] <= idx[:, None]  # (L, L) key <= query
        # a key is visible if it is a real event at or before the query; a padding query sees
        # only itself, which keeps its softmax defined (its output is never used)
        visible = (causal & valid[:, None, :]) | (idx[None, :] == idx[:, None])  # (B, L, L)
        bias = torch.where(visible, 0.0, NEG_INF)[:, None]  # (B, 1, L, L)
        if self.cfg.use_time:
            prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)  # (B, L)
            gap = times - torch.cat([times[:, :1], times[:, :-1]], dim=1)  # (B, L) seconds
            gap_bucket = torch.where(prev_valid & valid, time_buckets(gap, self.cfg.n_time_buckets), 0)
            x = x + self.gap_emb(gap_bucket)
            interval = times[:, :, None] - times[:, None, :]  # (B, L, L) query minus key, seconds
            pair_bias = self.time_bias(time_buckets(interval, self.cfg.n_time_buckets))  # (B, L, L, H)
            bias = bias + pair_bias.permute(0, 3, 1, 2)  # (B, H, L, L)
        x = self.emb_drop(self.emb_norm(x)) * valid[:, :, None]  # (B, L, D)
        for block in self.blocks:
            x = block(x, bias)
        return self.ln_f(x)  # (B, L, D)

    def loss(
        self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Mean next-item cross-entropy over every real position; targets (B, L), 0 = none."""
        table = self.item_table()  # (N+1, D)
        h = self.encode(items, types, times, table)  # (B, L, D)
        mask = targets > 0
        h, y = h[mask], targets[mask]  # (P, D), (P,)
        if self.cfg.loss == "ce":
            logits = h @ table.T  # (P, N+1)
            logits[:, 0] = NEG_INF  # never predict padding
            return F.cross_entropy(logits, y)
        # sampled softmax: the positive against negatives shared by the batch (uniform, so the
        # logQ correction is a constant); a negative that happens to be the positive is masked
        neg = torch.randint(1, self.cfg.n_items + 1, (self.cfg.n_negatives,), device=h.device)  # (K,)
        pos_logit = (h * table[y]).sum(-1, keepdim=True)  # (P, 1)
        neg_logit = (h @ table[neg].T).masked_fill(neg[None, :] == y[:, None], NEG_INF)  # (P, K)
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # (P, 1+K)
        return F.cross_entropy(logits, torch.zeros_like(y))

    def score(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        times: torch.Tensor,
        table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item scores (B, N) for the last position (column j = item j + 1), and the user
        representation (B, D). `table` lets the export pass a precomputed constant item table."""
        table = self.item_table() if table is None else table  # (N+1, D)
        h = self.encode(items, types, times, table)[:, -1]  # (B, D)
        return h @ table[1:].T, h  # (B, N), (B, D)
