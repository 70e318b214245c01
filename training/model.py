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
- a causal frequency filter beside attention in every block (`filter_alpha`, on by default):
  BSARec's inductive bias (Shin et al., AAAI 2024), a low-pass of the sequence plus its
  re-scaled high-frequency rest, mixed with the attention output; made causal so that every
  position can still be trained on (see `CausalFilter`);
- item text (`use_text`, on by default): a fixed sentence-encoder vector of the item's title
  (`training.text`) through a learned projection, added like the attributes. Items that share
  words share strength (better on Beauty; the figures are in the README), and it is the part of an
  item's representation that crosses domains (UniSRec, Hou et al., KDD 2022, in its simplest
  form).

Interest migration (`shift_weight` > 0, on by default): beside the next-item scores, a shift head
reads the same hidden state and predicts (a) the next event's category over the catalogue's
categories (cross-entropy), (b) whether that category is absent from the categories of the
last `shift_window` events, "a move" (binary cross-entropy), and (c) for moves, which of the
categories outside the window it goes to (cross-entropy on moves only), trained jointly with the next-item
loss (by default on the encoder's detached states, so the next-item model is unchanged by it;
`shift_detach`). Its move logit also sees, detached, how much of the category head's and of the next-item
distribution's mass lies outside the window. `migrate()` turns these into a calibrated
P(move), a next-category distribution that spends P(move) on the destinations outside the window
and 1 - P(move) inside it, and next-item scores re-weighted towards it by a factor `beta`
(0 = the plain next-item scores); the calibration, the destination mix and `beta` are fitted on
validation after training (`training.migration`).

Step prior (`step_prior_k` > 0, on by default): the served next-item logits add `step_weight` x
log(1 + how often the training events step from the shopper's last item to the item), each item's
strongest k steps kept — an explicit first-order Markov term (FPMC's, Rendle et al., WWW 2010, in
its simplest form) beside what the item graph spreads through the embeddings. It is not trained:
`step_weight` is fitted on validation after training (`training.step_prior`), before the migration
re-weighting, which then reads the distribution with it.

Items that never occur in the training events keep no id embedding (their row is masked to
zero), so a cold-start item is scored from its content (and, through the item graph's text
edges, its title look-alikes' rows) instead of from an untrained row that the softmax has pushed
down.

Inputs are left-padded (B, L) int64 tensors: item indices (0 = padding), event types
(0 = padding) and unix-second timestamps. `loss()` is the training objective; `score()` is the
inference path that the ONNX export traces.
"""

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from shared.model_package import N_EVENT_TYPES

NEG_INF = -1e9  # additive mask value; finite so that fully-masked rows cannot produce NaN


@dataclass
class ModelConfig:
    n_items: int = 0  # catalogue size, set from the data (item index 0 = padding)
    n_tags: int = 0  # tag vocabulary size, set from the data (tag index 0 = padding)
    n_categories: int = 0  # category vocabulary size, set from the data (category index 0 = padding)
    n_event_types: int = N_EVENT_TYPES  # 0 padding, then shiftrec.v1.EventType
    max_len: int = 50  # events seen per user; the fixed ONNX input length
    positions: str = "end"  # position embedding index: "end" = slot in the left-padded window (the
    # last event always at max_len - 1, as SASRec); "start" = events before it in the row, so a
    # position trained on sees exactly what the same prefix would at serving; "none" = no embedding
    dim: int = 128  # hidden size D (with text, 128 beat 64 on Beauty: README, The model)
    n_layers: int = 2
    n_heads: int = 1
    ffn_mult: int = 4  # feed-forward width = ffn_mult * D (4 beat SASRec's 1 on Beauty)
    dropout: float = 0.4  # with learned filter taps, .4 beat .5 on validation on Beauty and Sports
    # (training/RESULTS.md, 2026-12-05); .6 lost
    input_norm: bool = True  # LayerNorm over the summed input embeddings (as in FMLP-Rec/BSARec)
    n_time_buckets: int = 24  # 0 = no previous event; k >= 1: floor(log2(1 + minutes)) = k - 1
    use_tags: bool = True  # ablation switches: item attributes, behaviour type, time
    use_types: bool = True
    use_time: bool = True
    use_text: bool = True  # item text vectors (better on Beauty; cross-domain transfer; cold-start
    # items). Items without a title get the zero vector, so title-less data trains as without text
    text_dim: int = 384  # width of those vectors
    text_layers: int = 1  # 1: a linear projection of the text vector; 2: two bias-free layers with a
    # GELU between (a bias-free MLP keeps an untitled item's zero vector at zero)
    id_dropout: float = 0.0  # training: share of items whose id embedding is hidden per batch, so
    # that the content part alone learns to place an item (what a cold-start item has)
    shift_window: int = 5  # events whose categories are "where the shopper is" for P(move)
    shift_weight: float = 0.2  # weight of the shift head's two losses beside the next-item loss;
    # 0 = no shift head (P(move) and destinations then come from the next-item distribution alone)
    shift_detach: bool = True  # the shift losses do not train the encoder: the next-item model stays
    # exactly what it is without the head (sharing the encoder cost Beauty NDCG@10, results log)
    loss: str = "ce"  # "ce": full softmax over the catalogue; "sampled": sampled softmax
    n_negatives: int = 2048  # uniform negatives shared by a batch when loss == "sampled"
    filter_alpha: float = 0.7  # weight of the causal frequency branch beside attention (0 = none);
    # 0.7 with window 3 led a 9-config sweep on validation in both Amazon domains (training/RESULTS.md)
    filter_window: int = 3  # its low-pass spans the last `filter_window` events
    filter_learned: bool = True  # the low-pass taps learned per channel (a causal depthwise
    # convolution started at that mean; WEARec's learned filter, causal) instead of fixed
    label_smoothing: float = 0.0  # share of each next-item target spread over the whole catalogue
    cl_weight: float = 0.0  # contrastive regulariser: two dropout views of each sequence (0 = none)
    cl_temp: float = 1.0  # its softmax temperature
    graph_weight: float = 0.5  # the item table adds this times its own propagation over the item graph
    # of the training events (items that follow one another, LightGCN-normalised; 0 = none). The
    # export folds it into the table, so serving costs nothing more. .5 beat 0 and 1 on validation,
    # every seed in Beauty and Sports (training/RESULTS.md, 2026-12-05)
    graph_window: int = 1  # the graph links items up to this many events apart (a step of g counts 1/g)
    graph_hops: int = 1  # propagation steps: the table adds sum over k of graph_weight^k * A^k table
    graph_text_k: int = 10  # with item text: each item also linked to its k nearest items by title
    # (`training.text.text_neighbours`; 0 = transitions only), so a rare item borrows its look-alikes'
    graph_text_weight: float = 2.0  # those edges' share beside the transition edges. k 10 at weight
    # 2 beat 0, .5 and 1 on validation in Beauty and Sports (training/RESULTS.md, 2026-12-06)
    step_prior_k: int = 64  # the served scores add `step_weight` x log(1 + count of the step from the
    # shopper's last item to the item) over the training events, each item's strongest k steps kept
    # (0 = none); the weight is fitted on validation after training (`training.step_prior`), so
    # training is unchanged by it (training/RESULTS.md, 2026-12-06)


# A saved model's config names every field of its day; a field added later takes the value the
# model was trained with, which is what the field did before it existed, not today's default.
BEFORE_FIELD_EXISTED: dict[str, Any] = {"graph_weight": 0.0, "graph_text_k": 0, "step_prior_k": 0}


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields of a saved model (a package's or a parent's `model_config`)."""
    return {**BEFORE_FIELD_EXISTED, **saved}


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

    def forward(self, x: torch.Tensor, bias: torch.Tensor, last: bool = False) -> torch.Tensor:
        """Output (B, L, D); with `last`, the last position's alone (B, 1, D): keys and values
        from every position, the query and the projection only from the last."""
        B, L, D = x.shape
        H = self.n_heads
        if last:
            q = F.linear(x[:, -1:], self.qkv.weight[:D], self.qkv.bias[:D])
            k, v = F.linear(x, self.qkv.weight[D:], self.qkv.bias[D:]).split(D, dim=2)
        else:
            q, k, v = self.qkv(x).split(D, dim=2)  # each (B, L, D)
        Lq = q.shape[1]
        q = q.view(B, Lq, H, D // H).transpose(1, 2)  # (B, H, Lq, D/H)
        k = k.view(B, L, H, D // H).transpose(1, 2)
        v = v.view(B, L, H, D // H).transpose(1, 2)
        att = q @ k.transpose(-2, -1) / math.sqrt(D // H) + bias[:, :, -Lq:]  # (B, H, Lq, L)
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, Lq, D)  # (B, Lq, D)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim)
        self.out = nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out(self.drop(F.gelu(self.fc(x)))))


class CausalFilter(nn.Module):
    """The frequency branch of BSARec (Shin et al., AAAI 2024), made causal: a low-pass of the
    sequence (the mean of the last `filter_window` events, padding counting as zero) plus its
    high-frequency rest re-scaled per channel by a learned beta^2. BSARec's FFT low-pass looks at
    the whole sequence, which leaks the future into a model trained on every position; a causal
    moving average keeps each position's output a function of events up to it, and, being
    relative, the same whatever left padding a batch carries."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.window = cfg.filter_window
        self.sqrt_beta = nn.Parameter(torch.ones(cfg.dim))
        # with `filter_learned`, each channel's taps over the last `window` events (oldest first),
        # started at the moving average's 1 / window
        self.taps = nn.Parameter(torch.full((cfg.dim, 1, cfg.filter_window), 1.0 / cfg.filter_window)) \
            if cfg.filter_learned else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x * valid[:, :, None]  # (B, L, D); padding never enters a real position's average
        past = F.pad(x.transpose(1, 2), (self.window - 1, 0))  # (B, D, window - 1 + L)
        if self.taps is None:
            low = F.avg_pool1d(past, self.window, stride=1)
        else:
            low = F.conv1d(past, self.taps, groups=x.shape[2])
        low = low.transpose(1, 2)  # (B, L, D)
        return self.drop(low + self.sqrt_beta**2 * (x - low))


class Block(nn.Module):
    """Pre-norm transformer block; with `filter_alpha` > 0 its token mixer is
    (1 - alpha) * attention + alpha * the causal frequency filter (BSARec's mixing)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.alpha = cfg.filter_alpha
        self.filter = CausalFilter(cfg) if cfg.filter_alpha > 0 else None
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, valid: torch.Tensor, last: bool = False) -> torch.Tensor:
        """(B, L, D); with `last`, the last position's output alone (B, 1, D), for serving, which
        reads only that position: the feed-forward, the query and the mixing run on one position."""
        u = self.ln1(x)
        if last:
            x = x[:, -1:]
        if self.filter is None:
            x = x + self.attn(u, bias, last)
        else:
            low = self.filter(u, valid)
            x = x + (1.0 - self.alpha) * self.attn(u, bias, last) + self.alpha * (low[:, -1:] if last else low)
        return x + self.ffn(self.ln2(x))


class ShiftRec(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        item_tags: torch.Tensor,
        item_text: torch.Tensor | None = None,
        item_known: torch.Tensor | None = None,
        item_categories: torch.Tensor | None = None,
        item_graph: tuple[torch.Tensor, torch.Tensor] | None = None,
        item_steps: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Constants per item: `item_tags` (N+1, T) int64 tag indices, 0-padded; `item_text`
        (N+1, text_dim) float text vectors (when cfg.use_text); `item_known` (N+1,) bool, False
        for items absent from the training events (default: every item known);
        `item_categories` (N+1,) int64 category index of each item, 1..n_categories (row 0 = 0;
        default: one category for every item); `item_graph` ((2, E) int64 edges, (E,) weights: the
        training events' item graph, `SequenceData.item_transitions`; default: no edges) when
        cfg.graph_weight > 0; `item_steps` (starts (N+2,), cols (E,), values (E,): the training
        events' directed steps, `SequenceData.item_steps`; default: none) when cfg.step_prior_k > 0."""
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.item_emb = nn.Embedding(cfg.n_items + 1, D, padding_idx=0)
        known = torch.ones(cfg.n_items + 1, dtype=torch.bool) if item_known is None else item_known
        self.register_buffer("id_mask", known.to(torch.float32)[:, None].clone(), persistent=True)  # (N+1, 1)
        if cfg.positions not in ("end", "start", "none"):
            raise ValueError(f"positions must be 'end', 'start' or 'none', not {cfg.positions!r}")
        if cfg.label_smoothing and (cfg.loss != "ce" or not 0 < cfg.label_smoothing < 1):
            raise ValueError(f"label_smoothing must be in [0, 1) and needs loss 'ce', not "
                             f"{cfg.label_smoothing!r} with {cfg.loss!r}")
        if cfg.graph_weight:
            if cfg.graph_weight < 0:
                raise ValueError(f"graph_weight must be >= 0, not {cfg.graph_weight!r}")
            if cfg.graph_text_k < 0 or cfg.graph_text_weight < 0:
                raise ValueError(f"graph_text_k and graph_text_weight must be >= 0, not "
                                 f"{cfg.graph_text_k!r} and {cfg.graph_text_weight!r}")
            if cfg.graph_hops < 1 or (cfg.graph_hops > 1 and cfg.loss != "ce"):
                raise ValueError(f"graph_hops must be >= 1, and 1 under sampled softmax (a batch's rows "
                                 f"gather one step of neighbours); not {cfg.graph_hops!r} with {cfg.loss!r}")
            if item_graph is None:  # no edges: every row as without the graph
                item_graph = (torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0))
            edges, weights = item_graph[0].to(torch.int64).clone(), item_graph[1].to(torch.float32).clone()
            self.register_buffer("graph_edges", edges, persistent=True)  # (2, E): source, destination
            self.register_buffer("graph_weights", weights, persistent=True)  # (E,)
            self._derive_graph()
            # a loaded state's edges replace these in place: what is derived from them follows
            self.register_load_state_dict_post_hook(ShiftRec._graph_after_load)
        if cfg.step_prior_k < 0:
            raise ValueError(f"step_prior_k must be >= 0, not {cfg.step_prior_k!r}")
        if cfg.step_prior_k:
            if item_steps is None:  # no steps: a prior of zero everywhere
                item_steps = (torch.zeros(cfg.n_items + 2, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                              torch.zeros(0))
            starts, cols, values = item_steps
            if tuple(starts.shape) != (cfg.n_items + 2,) or cols.shape != values.shape:
                raise ValueError(f"item_steps needs starts of shape ({cfg.n_items + 2},) and cols and values alike")
            # one entry past the last, (padding, 0): where a row's unused slots read
            self.register_buffer("step_starts", starts.to(torch.int64).clone(), persistent=True)
            self.register_buffer("step_cols", torch.cat([cols.to(torch.int64), torch.zeros(1, dtype=torch.int64)]),
                                 persistent=True)  # (E+1,)
            self.register_buffer("step_values", torch.cat([values.to(torch.float32), torch.zeros(1)]),
                                 persistent=True)  # (E+1,)
            self.register_buffer("step_weight", torch.tensor(0.0), persistent=True)  # fitted on validation
        if cfg.text_layers not in (1, 2):  # refused with or without text: a config means what it says
            raise ValueError(f"text_layers must be 1 or 2, not {cfg.text_layers!r}")
        self.pos_emb = nn.Embedding(cfg.max_len, D)
        if cfg.use_tags:
            # mean of the item's tag embeddings; padding tags are left out of the mean
            self.tag_emb = nn.EmbeddingBag(cfg.n_tags + 1, D, mode="mean", padding_idx=0)
            self.register_buffer("item_tags", item_tags.clone(), persistent=True)  # (N+1, T)
        if cfg.use_text:
            if item_text is None or tuple(item_text.shape) != (cfg.n_items + 1, cfg.text_dim):
                raise ValueError(f"use_text needs item_text of shape ({cfg.n_items + 1}, {cfg.text_dim})")
            if cfg.text_layers == 1:
                self.text_proj: nn.Module = nn.Linear(cfg.text_dim, D, bias=False)
            else:
                self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, D, bias=False), nn.GELU(),
                                               nn.Linear(D, D, bias=False))
            self.register_buffer("item_text", item_text.to(torch.float32).clone(), persistent=True)
        if cfg.use_types:
            self.type_emb = nn.Embedding(cfg.n_event_types, D, padding_idx=0)
        if cfg.use_time:
            self.gap_emb = nn.Embedding(cfg.n_time_buckets, D)
            self.time_bias = nn.Embedding(cfg.n_time_buckets, cfg.n_heads)
        C1 = cfg.n_categories + 1
        cats = torch.ones(cfg.n_items + 1, dtype=torch.int64) if item_categories is None else item_categories
        cats = cats.to(torch.int64).clone()
        cats[0] = 0
        if int(cats.max()) >= C1 and cfg.n_categories > 0:
            raise ValueError(f"item_categories index past n_categories={cfg.n_categories}")
        C1 = max(C1, int(cats.max()) + 1)
        self.register_buffer("item_cat", cats, persistent=True)  # (N+1,)
        # (N+1, C+1) one-hot: item probabilities @ it = category probabilities
        self.register_buffer("cat_onehot", F.one_hot(cats, C1).to(torch.float32), persistent=False)
        self.emb_norm = nn.LayerNorm(D) if cfg.input_norm else nn.Identity()
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D)
        # fitted on validation after training (training.migration); defaults leave the scores as they are
        self.register_buffer("shift_cal", torch.tensor([1.0, 0.0]), persistent=True)  # Platt a, b of P(move)
        self.register_buffer("dest_mix", torch.tensor(0.0), persistent=True)  # destinations: 0 head .. 1 items
        self.register_buffer("beta", torch.tensor(0.0), persistent=True)  # strength of the re-weighting
        self.apply(self._init_weights)
        if cfg.shift_weight > 0:
            # drawn from a forked random state: the encoder's initialisation and training draw the
            # same numbers with or without the head
            with torch.random.fork_rng(devices=[]):
                self.cat_head = nn.Linear(D, C1)  # next-category logits (column 0 = padding, masked)
                self.dest_head = nn.Linear(D, C1)  # where a move goes: logits over the categories outside
                self.move_head = nn.Linear(D, 1)  # move logit from the hidden state ...
                self.move_mix = nn.Parameter(torch.zeros(2))  # ... plus these weights on logit(P_out)
                self.cat_head.apply(self._init_weights)
                self.dest_head.apply(self._init_weights)
                self.move_head.apply(self._init_weights)

    def _derive_graph(self) -> None:
        """The item graph as a sparse (N+1, N+1) matrix, row = destination (its product with the
        table cost 38 ms a step forward and back on Beauty where a gather and index_add cost 253),
        and its rows as offsets into the coalesced, row-sorted entries: what a few rows' share of
        the propagation needs (sampled softmax) without building the whole table."""
        n = self.cfg.n_items + 1
        edges = self.graph_edges
        graph = torch.sparse_coo_tensor(edges[[1, 0]], self.graph_weights, (n, n), check_invariants=True).coalesce()
        starts = torch.zeros(n + 1, dtype=torch.int64, device=edges.device)
        starts[1:] = torch.cumsum(torch.bincount(graph.indices()[0], minlength=n), 0)
        self.register_buffer("graph", graph, persistent=False)
        self.register_buffer("graph_starts", starts, persistent=False)

    @staticmethod
    def _graph_after_load(module: nn.Module, _keys: Any) -> None:
        cast("ShiftRec", module)._derive_graph()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def item_table(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Every item's representation (N+1, D): its content (`_content_table`) plus, with the
        item graph, graph_weight^k times its k-step neighbours'. Row 0 = 0. With `rows` (K,) only
        those items' representations (K, D) (what sampled softmax needs of a large catalogue)."""
        if self.cfg.graph_weight <= 0:
            return self._content_table(rows)
        # propagation over the item graph; row 0 and items without edges unchanged
        if rows is None:
            table = spread = self._content_table()
            for hop in range(1, self.cfg.graph_hops + 1):
                spread = torch.sparse.mm(self.graph, spread)
                table = table + self.cfg.graph_weight**hop * spread
            return table
        starts, ends = self.graph_starts[rows], self.graph_starts[rows + 1]  # (K,): each row's entries
        counts = ends - starts
        owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)  # (E_K,)
        entry = torch.arange(int(counts.sum()), device=rows.device) - (torch.cumsum(counts, 0) - counts)[owner] + starts[owner]
        neighbours = self.graph.indices()[1][entry]  # (E_K,)
        # the rows and their neighbours built once, so an item is the same on both sides
        needed, local = torch.unique(torch.cat([rows, neighbours]), return_inverse=True)
        content = self._content_table(needed)  # (U, D)
        spread = torch.zeros(len(rows), content.shape[1], dtype=content.dtype, device=content.device)
        spread = spread.index_add(0, owner, self.graph.values()[entry, None] * content[local[len(rows):]])
        return content[local[: len(rows)]] + self.cfg.graph_weight * spread

    def _content_table(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """item_table before the graph: id embedding (zero for items unseen in training) + mean tag
        embedding + projected text vector, all items or `rows`."""
        mask = self.id_mask if rows is None else self.id_mask[rows]  # (N+1, 1) or (K, 1)
        if self.training and self.cfg.id_dropout > 0:  # the same items on the input and output side
            mask = mask * (torch.rand_like(mask) >= self.cfg.id_dropout)
        ids = self.item_emb.weight if rows is None else self.item_emb(rows)
        table = ids * mask  # (N+1, D)
        if self.cfg.use_tags:
            table = table + self.tag_emb(self.item_tags if rows is None else self.item_tags[rows])
        if self.cfg.use_text:  # row 0 stays 0 (no bias)
            table = table + self.text_proj(self.item_text if rows is None else self.item_text[rows])
        return table

    @classmethod
    def from_state(cls, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> "ShiftRec":
        """The model of a saved state (a package's `weights.pt`), with the per-item constants it holds."""
        graph = (state["graph_edges"], state["graph_weights"]) if "graph_edges" in state else None
        steps = ((state["step_starts"], state["step_cols"][:-1], state["step_values"][:-1])
                 if "step_starts" in state else None)
        model = cls(cfg, state["item_tags"], state.get("item_text"), state["id_mask"][:, 0] > 0,
                    state.get("item_cat"), graph, steps)
        model.load_state_dict(state)
        return model

    def encode(
        self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor,
        table: "torch.Tensor | ExportTable | GatheredRows", last: bool = False,
    ) -> torch.Tensor:
        """Hidden states (B, L, D) for left-padded (B, L) inputs; position t sees events <= t.
        With `last`, the last position's alone (B, 1, D), what serving reads: the last block
        then runs at that position only."""
        L = items.shape[1]
        valid = items > 0  # (B, L)
        x = _rows(table, items)  # (B, L, D)
        if self.cfg.positions == "end":  # the slot in the window: positions count back from the end
            x = x + self.pos_emb(torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=items.device))
        elif self.cfg.positions == "start":  # events before this one in the row: 0 for the first
            x = x + self.pos_emb((torch.cumsum(valid.to(torch.int64), dim=1) - 1).clamp_min(0))
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
        for i, block in enumerate(self.blocks):
            x = block(x, bias, valid, last=last and i == len(self.blocks) - 1)
        return self.ln_f(x[:, -1:] if last else x)  # (B, L, D) or (B, 1, D)

    def steps_from(self, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The strongest `step_prior_k` steps from each of `last` (B,) items: destination items
        (B, K) and their log(1 + count) (B, K); unused slots hold (padding, 0)."""
        k = self.cfg.step_prior_k
        lo, hi = self.step_starts[last], self.step_starts[last + 1]  # (B,)
        slot = lo[:, None] + torch.arange(k, device=last.device)  # (B, K)
        slot = torch.where(slot < hi[:, None], slot, self.step_cols.shape[0] - 1)  # unused: the (padding, 0) entry
        return self.step_cols[slot], self.step_values[slot]

    def step_candidates(self, items: torch.Tensor) -> torch.Tensor:
        """(B, K) 0-based columns of the items the step prior lifts for each row's last item
        (left-padded `items` (B, L)), -1 in unused slots: a retrieval package adds them to the
        index's candidates, so that what the prior lifts is ranked whatever the index finds."""
        return self.steps_from(items[:, -1])[0] - 1

    def step_prior(self, items: torch.Tensor) -> torch.Tensor:
        """(B, N) the unweighted prior of every item (column j = item j + 1) given each row's
        last item (left-padded `items` (B, L); a row of padding has none: zeros)."""
        cols, values = self.steps_from(items[:, -1])
        prior = torch.zeros(items.shape[0], self.cfg.n_items + 1, device=items.device)
        return prior.scatter_add(1, cols, values)[:, 1:]

    def window_mask(self, items: torch.Tensor) -> torch.Tensor:
        """(B, L, C+1) float, 1 where the category occurs among the last `shift_window` events up to
        each position (padding never counts)."""
        W = self.cfg.shift_window
        cats = self.item_cat[items]  # (B, L); 0 for padding
        B, L = cats.shape
        padded = torch.cat([torch.zeros_like(cats[:, :1]).expand(B, W - 1), cats], dim=1)  # (B, L+W-1)
        idx = torch.stack([padded[:, k : k + L] for k in range(W)], dim=2)  # (B, L, W)
        mask = torch.zeros(B, L, self.cat_onehot.shape[1], device=items.device).scatter(2, idx, 1.0)
        return mask * self.cat_onehot[0].logical_not().float()  # (B, L, C+1); column 0 = padding, 0

    def shift_parts(
        self, h: torch.Tensor, inside: torch.Tensor, item_cat_p: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From hidden states (P, D), window masks (P, C+1) and the next-item distribution summed
        per category (P, C+1): the raw move logit (P,); log-probabilities (P, C+1) of the next
        category (category head), of the destination given a move (destination head: only the
        categories outside the window) and of the next-item distribution per category. Without a
        head the item distribution stands in for both heads."""
        outside = (1.0 - inside) * (1.0 - self.cat_onehot[0])  # (P, C+1) real categories not in the window
        item_cat_logp = torch.log(item_cat_p.clamp_min(1e-12))  # (P, C+1)
        out_item = (item_cat_p * outside).sum(-1)  # (P,)
        if self.cfg.shift_weight <= 0:
            return _logit(out_item), item_cat_logp, item_cat_logp, item_cat_logp
        cat_logits = self.cat_head(h).masked_fill(self.cat_onehot[0] > 0, NEG_INF)  # (P, C+1)
        cat_logp = F.log_softmax(cat_logits, dim=-1)
        dest_logp = F.log_softmax(self.dest_head(h).masked_fill(outside == 0, NEG_INF), dim=-1)  # (P, C+1)
        out_cat = (cat_logp.exp() * outside).sum(-1)  # (P,)
        move = (self.move_head(h).squeeze(-1) + self.move_mix[0] * _logit(out_cat.detach())
                + self.move_mix[1] * _logit(out_item.detach()))  # (P,)
        return move, cat_logp, dest_logp, item_cat_logp

    def loss(
        self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Mean next-item cross-entropy over every real position; targets (B, L), 0 = none. With
        the shift head: + shift_weight * (next-category cross-entropy + move cross-entropy)."""
        mask = targets > 0
        y = targets[mask]  # (P,)
        if self.cfg.loss == "ce":
            table = self.item_table()  # (N+1, D)
            source: torch.Tensor | GatheredRows = table
            h = self.encode(items, types, times, source)  # (B, L, D)
            hs = h[mask]  # (P, D)
            logits = hs @ table.T  # (P, N+1)
            logits[:, 0] = NEG_INF  # never predict padding
            if self.cfg.label_smoothing > 0:  # spread over real items only (padding's logit is -1e9)
                loss = F.cross_entropy(logits[:, 1:], y - 1, label_smoothing=self.cfg.label_smoothing)
            else:
                loss = F.cross_entropy(logits, y)
        else:
            # sampled softmax: the positive against negatives shared by the batch (uniform, so the
            # logQ correction is a constant); a negative that happens to be the positive is masked.
            # Only the rows the batch touches are built: the whole table of a million-item
            # catalogue per step would cost more than the rest of the step.
            neg = torch.randint(1, self.cfg.n_items + 1, (self.cfg.n_negatives,), device=items.device)  # (K,)
            used, local = torch.unique(torch.cat([items.reshape(-1), y, neg]), return_inverse=True)
            table = self.item_table(used)  # (U, D), row r = item used[r]
            n_in = items.numel()
            source = GatheredRows(table[local[:n_in]].reshape(*items.shape, -1))
            h = self.encode(items, types, times, source)
            hs = h[mask]  # (P, D)
            pos_logit = (hs * table[local[n_in : n_in + len(y)]]).sum(-1, keepdim=True)  # (P, 1)
            neg_logit = (hs @ table[local[n_in + len(y) :]].T).masked_fill(neg[None, :] == y[:, None], NEG_INF)
            loss = F.cross_entropy(torch.cat([pos_logit, neg_logit], dim=1), torch.zeros_like(y))  # (P, 1+K)
        if self.training and self.cfg.cl_weight > 0:
            loss = loss + self.cfg.cl_weight * self.contrastive(h[:, -1], self.encode(items, types, times, source)[:, -1])
        if self.cfg.shift_weight <= 0:
            return loss
        inside = self.window_mask(items)[mask]  # (P, C+1)
        y_cat = self.item_cat[y]  # (P,)
        moved = 1.0 - inside.gather(1, y_cat[:, None]).squeeze(1)  # (P,)
        if self.cfg.loss == "ce":
            item_cat_p = F.softmax(logits.detach(), dim=-1) @ self.cat_onehot  # (P, C+1)
        else:  # no full distribution: the feature is left uninformative
            item_cat_p = torch.full_like(inside, 1.0 / inside.shape[1])
        head_in = hs.detach() if self.cfg.shift_detach else hs
        move, cat_logp, dest_logp, _ = self.shift_parts(head_in, inside, item_cat_p)
        shift = F.nll_loss(cat_logp, y_cat) + F.binary_cross_entropy_with_logits(move, moved)
        went = moved > 0
        if went.any():  # the destination head learns only from moves
            shift = shift + F.nll_loss(dest_logp[went], y_cat[went])
        return loss + self.cfg.shift_weight * shift

    def contrastive(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """InfoNCE between two dropout views (B, D) of the same sequences' last states, the other
        sequences of the batch as negatives, both directions (DuoRec's unsupervised augmentation,
        Qiu et al., WSDM 2022)."""
        logits = z1 @ z2.T / self.cfg.cl_temp  # (B, B)
        labels = torch.arange(z1.shape[0], device=z1.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    def serve(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        times: torch.Tensor,
        table: "torch.Tensor | ExportTable | None" = None,
    ) -> dict[str, torch.Tensor]:
        """The inference path, for the last position of each row:
        base (B, N) next-item logits (with the step prior: plus step_weight times `prior` (B, N),
        also returned, unweighted); scores (B, N) the same re-weighted toward the predicted
        next categories (base + beta * (log p_next_category - log p_category under base), per
        item's category); user (B, D); move_logit (B,) raw; shift_probability (B,) calibrated
        P(move); category_probabilities (B, C) next-category distribution (column c = category
        c + 1); and, for measuring: inside (B, C+1) the window's categories, cat_logp, dest_logp
        and item_cat_logp (B, C+1) the category head's, the destination head's and the next-item
        distribution's log category probabilities, delta (B, C+1) the per-category score change
        before `beta`."""
        table = self.item_table() if table is None else table  # (N+1, D), or an ExportTable
        h = self.encode(items, types, times, table, last=True)[:, -1]  # (B, D)
        if isinstance(table, ExportTable):
            base = _ScoresT.apply(h, table.rows)[:, 1:]  # (B, N); the export's one copy of the table
        else:
            base = h @ table[1:].T  # (B, N)
        prior = None
        if self.cfg.step_prior_k:  # the step prior, before the re-weighting reads the distribution
            prior = self.step_prior(items)  # (B, N)
            base = base + self.step_weight * prior
        # per-category sums of the next-item distribution; a scatter-add, not a product with the
        # (N, C+1) one-hot table, which ONNX Runtime re-packs on every call (0.5 ms at batch 1)
        probs = F.softmax(base, dim=-1)  # (B, N)
        item_cat_p = torch.zeros(base.shape[0], self.cat_onehot.shape[1], device=base.device).scatter_add(
            1, self.item_cat[1:].expand_as(probs), probs)  # (B, C+1)
        out = self.migrate(h, items, item_cat_p)
        scores = base + self.beta * out["delta"][:, self.item_cat[1:]]  # (B, N)
        extra = {} if prior is None else {"prior": prior}
        return {"base": base, "scores": scores, "user": h, **extra, **out}

    def migrate(self, h: torch.Tensor, items: torch.Tensor, item_cat_p: torch.Tensor) -> dict[str, torch.Tensor]:
        """The interest-migration part of `serve` from the user states h (B, D), the inputs' items
        (for the window's categories) and the next-item distribution summed per category (B, C+1):
        P(move), the next-category distribution and the per-category score change `delta`."""
        inside = self.window_mask(items[:, -self.cfg.shift_window :])[:, -1]  # (B, C+1) last position only
        move, cat_logp, dest_logp, item_cat_logp = self.shift_parts(h, inside, item_cat_p)
        outside = (1.0 - inside) * (1.0 - self.cat_onehot[0])  # (B, C+1)
        p_move = torch.sigmoid(self.shift_cal[0] * move + self.shift_cal[1])  # (B,)
        p_move = p_move * (outside.sum(-1) > 0).float()  # nowhere left to move to: 0
        # where a move goes: the destination head, the item distribution, or their geometric mean;
        # where a stay goes: the item distribution over the window's categories
        q_out = torch.exp((1.0 - self.dest_mix) * dest_logp + self.dest_mix * item_cat_logp) * outside
        q_in = item_cat_p * inside  # (B, C+1)
        p_cat = (p_move[:, None] * q_out / q_out.sum(-1, keepdim=True).clamp_min(1e-12)
                 + (1.0 - p_move)[:, None] * q_in / q_in.sum(-1, keepdim=True).clamp_min(1e-12))  # (B, C+1)
        delta = torch.log(p_cat.clamp_min(1e-12)) - item_cat_logp  # (B, C+1)
        return {"move_logit": move, "shift_probability": p_move, "category_probabilities": p_cat[:, 1:],
                "inside": inside, "cat_logp": cat_logp, "dest_logp": dest_logp, "item_cat_logp": item_cat_logp,
                "delta": delta}

    def encode_user(self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor,
                    history_vectors: torch.Tensor) -> torch.Tensor:
        """The user states h (B, D) of `serve`, with the history's item-table rows (B, L, D) given
        instead of read from the table (a retrieval package's encoder carries no item table)."""
        return self.encode(items, types, times, GatheredRows(history_vectors), last=True)[:, -1]

    def rank_candidates(self, h: torch.Tensor, items: torch.Tensor, candidates: torch.Tensor,
                        candidate_vectors: torch.Tensor,
                        mass: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                        ) -> torch.Tensor:
        """`serve`'s migration-aware scores (B, M) of M candidate items per row (0-based columns,
        their item-table rows (B, M, D) given). The re-weighting needs the next-item distribution
        summed per category; without `mass` it is taken over the candidates alone (with every
        item a candidate this is `serve`'s scores exactly). With `mass` = (vectors (S, D),
        categories (S,), weights (S,), slots (N,)), a fixed per-category sample of the catalogue,
        each weighted by the items it stands for, adds the rest of each category's share (an
        estimate: the tail a top-M leaves out holds most of a category's mass in a large
        catalogue). `slots` gives each catalogue column's place in the sample (-1: not sampled):
        a sampled item that is also a candidate is counted once, as a candidate, and left out of
        the sample's term, so that the sample estimates only what the candidates do not cover
        (counting the head twice pulled the shares toward the candidates' categories). The step
        prior is added to the candidates' scores exactly; the sample's term leaves it out (it
        touches at most `step_prior_k` items of a row, which a retrieval package adds to the
        candidates: `step_candidates`)."""
        base = (candidate_vectors @ h[:, :, None])[:, :, 0]  # (B, M)
        if self.cfg.step_prior_k:  # `serve`'s step prior, for the candidates
            cols, values = self.steps_from(items[:, -1])  # (B, K)
            hit = (cols[:, None, :] == (candidates + 1)[:, :, None]).to(base.dtype)  # (B, M, K)
            base = base + self.step_weight * (hit * values[:, None, :]).sum(-1)
        cats = self.item_cat[candidates + 1]  # (B, M)
        zeros = torch.zeros(base.shape[0], self.cat_onehot.shape[1], device=base.device)
        if mass is None:
            item_cat_p = zeros.scatter_add(1, cats, F.softmax(base, dim=-1))  # (B, C+1)
        else:
            vectors, mass_cats, weights, slots = mass
            extra = h @ vectors.T  # (B, S)
            sampled = slots[candidates]  # (B, M): each candidate's place in the sample, -1 if none
            n_sample = extra.shape[1]
            hit = torch.zeros(extra.shape[0], n_sample + 1, device=base.device).scatter(
                1, torch.where(sampled >= 0, sampled, n_sample), 1.0)[:, :n_sample]  # (B, S)
            top = torch.maximum(base.max(-1, keepdim=True).values, extra.max(-1, keepdim=True).values)
            item_cat_p = zeros.scatter_add(1, cats, torch.exp(base - top)).scatter_add(
                1, mass_cats.expand_as(extra), (1.0 - hit) * weights * torch.exp(extra - top))
            item_cat_p = item_cat_p / item_cat_p.sum(-1, keepdim=True)  # (B, C+1)
        delta = self.migrate(h, items, item_cat_p)["delta"]
        return base + self.beta * delta.gather(1, cats)

    def score(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        times: torch.Tensor,
        table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Served next-item scores (B, N) for the last position (column j = item j + 1), and the
        user representation (B, D). `table` lets the export pass a precomputed constant item table."""
        out = self.serve(items, types, times, table)
        return out["scores"], out["user"]


class ExportTable:
    """The item table (N+1, D) as the export's one constant: rows are gathered from it along its
    first axis and the scores come from one Gemm that reads it transposed (`_ScoresT`), dropping
    padding's column from the product. Read as `table[1:].T` it would be folded into a second,
    transposed constant beside the first (the graph of a million-item catalogue doubled to 1 GB);
    held transposed instead, every history row was gathered across the table's columns, a
    strided read (gather of 50 rows plus the product: 0.66 ms transposed, 0.37 ms row-major, at
    batch 1 on a 12k table, ONNX Runtime, one thread; the product alone costs the same either way)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows


class _ScoresT(torch.autograd.Function):
    """h (B, D) @ table (N+1, D).T, exported as Gemm(transB=1) on the table itself (the tracer
    would fold a Transpose of the constant into a copy). Inference only."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return h @ table.T

    @staticmethod
    def symbolic(g: Any, h: Any, table: Any) -> Any:
        return g.op("Gemm", h, table, transB_i=1)


class GatheredRows:
    """The item-table rows of a batch's items (B, L, D), gathered by the caller."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows


def _rows(table: "torch.Tensor | ExportTable | GatheredRows", items: torch.Tensor) -> torch.Tensor:
    """table[items] (B, L, D) from a table, the export's table or the rows themselves."""
    if isinstance(table, GatheredRows):
        return table.rows
    if isinstance(table, ExportTable):
        return table.rows[items]
    return table[items]


def _logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return torch.log(p + eps) - torch.log(1.0 - p + eps)
