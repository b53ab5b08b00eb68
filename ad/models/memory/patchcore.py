"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Locally aware patch features from mid-level backbone layers form a memory bank of nominal patches, reduced by
greedy k-center coreset subsampling; a test patch's score is its distance to the nearest bank patch. The
image score is the largest patch score, reweighted by how isolated its nearest bank patch is (paper eq. 7).

Bounded memory: the training patches are held until the end of the fit (one greedy pass over all of them, the
paper's procedure) only while they fit in `feature_budget_mb`. A larger training set (Real-IAD's thousands of
views, a large image size or backbone) is reduced as it streams: whenever the held patches pass the budget they
are cut to their own coreset (`coreset_ratio` of them) and only those rows are kept (merge and reduce), so the
fit holds at most the budget plus the growing bank, never the category. The bank then has the same size
(up to per-chunk rounding), each chunk is covered as tightly as its own greedy covers it, and the run's notes
say the bank was built in chunks.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models.memory._coreset import greedy_coreset
from ad.models.memory._memory import KnnIndex
from ad.models._maps import aligned_features, full_precision, upsample_maps
from ad.models.base import AnomalyModel, Prediction
from ad.values import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt


class PatchCore(AnomalyModel):
    default_max_epochs = 1

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (2, 3),
        coreset_ratio: Fraction = 0.1,
        num_neighbors: PositiveInt = 1,
        reweight_neighbors: PositiveInt = 9,
        patch_size: PositiveInt = 3,
        pretrain_embed_dim: Optional[PositiveInt] = None,
        target_embed_dim: Optional[PositiveInt] = None,
        projection_dim: PositiveInt = 128,
        coreset_cell_size: PositiveInt = 256,
        sigma: NonNegativeFloat = 4.0,
        seed: NonNegativeInt = 0,
        search: Literal["exact", "flat", "ivf"] = "exact",
        nprobe: PositiveInt = 8,
        feature_budget_mb: Optional[PositiveInt] = 4096,
    ) -> None:
        super().__init__()
        if not 0.0 < float(coreset_ratio) <= 1.0:
            raise ConfigError(f"model.coreset_ratio={coreset_ratio} must be in (0, 1]")
        if search not in KnnIndex.KINDS:
            raise ConfigError(f"model.search={search!r}: use 'exact' (pruned exact search), 'flat' (brute force) "
                              "or 'ivf' (approximate)")
        if int(num_neighbors) < 1 or int(reweight_neighbors) < 1:
            raise ConfigError("model.num_neighbors and model.reweight_neighbors must be >= 1")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.feature_extractor = FeatureExtractor(cfg, layers=layers, frozen=True)
        self.coreset_ratio = float(coreset_ratio)
        self.num_neighbors = int(num_neighbors)
        self.reweight_neighbors = int(reweight_neighbors)
        self.patch_size = int(patch_size)
        self.pretrain_embed_dim = pretrain_embed_dim
        self.target_embed_dim = target_embed_dim
        self.projection_dim = int(projection_dim)
        self.coreset_cell_size = int(coreset_cell_size)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.search = search
        self.nprobe = int(nprobe)
        self.feature_budget_mb = int(feature_budget_mb) if feature_budget_mb else None
        self.register_buffer("memory_bank", torch.empty(0, self.embed_dim))
        self._train_features: List[torch.Tensor] = []  # held patches not yet reduced
        self._reduced: List[torch.Tensor] = []  # coresets of the chunks reduced so far (bounded fits)
        self.notes: List[str] = []
        self._index = self._new_index()

    def _new_index(self) -> KnnIndex:
        return KnnIndex(kind=self.search, nprobe=self.nprobe, seed=self.seed)

    @property
    def embed_dim(self) -> int:
        layers = len(self.feature_extractor.channels)
        d = self.pretrain_embed_dim * layers if self.pretrain_embed_dim else sum(self.feature_extractor.channels)
        return min(d, self.target_embed_dim) if self.target_embed_dim else d

    # --- features -----------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings [B, h, w, D] on the finest requested layer's grid."""
        # channels_last end to end: [B,C,h,w] -> [B·h·w, C] is then a view, not a transposing copy
        feats = aligned_features(self.feature_extractor(images, channels_last=True), pool=self.patch_size)
        b, _, h, w = feats[0].shape
        per_layer = [f.permute(0, 2, 3, 1).reshape(b * h * w, -1) for f in feats]
        if self.pretrain_embed_dim:
            # paper: every layer pooled to the same width so each contributes equally, then stacked
            per_layer = [F.adaptive_avg_pool1d(f.unsqueeze(1), self.pretrain_embed_dim).squeeze(1) for f in per_layer]
        emb = torch.cat(per_layer, dim=1)
        if self.target_embed_dim and self.target_embed_dim < emb.shape[1]:
            emb = F.adaptive_avg_pool1d(emb.unsqueeze(1), self.target_embed_dim).squeeze(1)
        return emb.view(b, h, w, -1)

    # --- fitting ------------------------------------------------------------------------------------------
    def on_fit_start(self, train_loader=None) -> None:
        self._train_features, self._reduced, self.notes = [], [], []

    def training_step(self, batch: Dict[str, Any]) -> None:
        emb = self.embed(batch["image"])
        self._train_features.append(emb.reshape(-1, emb.shape[-1]).detach().float().cpu())
        if self.feature_budget_mb and self.held_feature_bytes() > self.feature_budget_mb * 2**20:
            self._reduced.append(self._coreset_of(self._train_features))
            self._train_features = []
        return None

    def held_feature_bytes(self) -> int:
        """Bytes of training patches held and not yet reduced (what `feature_budget_mb` bounds)."""
        return sum(c.numel() * c.element_size() for c in self._train_features)

    def on_fit_end(self, val_loader: Optional[Iterable[Dict[str, Any]]] = None) -> None:
        if not self._train_features and not self._reduced:
            raise RuntimeError("PatchCore.on_fit_end: no training features were collected")
        if self._reduced:  # a bounded fit: the bank is the chunks' coresets
            if self._train_features:
                self._reduced.append(self._coreset_of(self._train_features))
            self.notes = [f"PatchCore: training patches exceeded model.feature_budget_mb={self.feature_budget_mb}; "
                          f"memory bank built from the coresets of {len(self._reduced)} chunks"]
            bank = torch.cat(self._reduced)
        else:
            bank = self._coreset_of(self._train_features)
        self._train_features, self._reduced = [], []
        self.memory_bank = bank.to(self.memory_bank.device, torch.float32).contiguous()
        self._index = self._new_index()  # never reuse an index of a previous fit

    def _coreset_of(self, chunks: List[torch.Tensor]) -> torch.Tensor:
        """The `coreset_ratio` greedy coreset of the rows of `chunks` (all of them when that is every row)."""
        n = sum(c.shape[0] for c in chunks)
        n_select = max(1, int(round(self.coreset_ratio * n)))
        if n_select >= n:
            return torch.cat(chunks)
        idx = greedy_coreset(chunks, n_select, projection_dim=self.projection_dim,
                             cell_size=self.coreset_cell_size, seed=self.seed, device=self.memory_bank.device)
        # idx is sorted: select each chunk's rows in turn (no concatenated copy of all features)
        bank, lo = [], 0
        for c in chunks:
            bank.append(c[idx[(idx >= lo) & (idx < lo + c.shape[0])] - lo])
            lo += c.shape[0]
        return torch.cat(bank)

    # --- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("PatchCore.predict called before fitting (empty memory bank)")
        emb = self.embed(images).float()
        with full_precision(emb):  # the backbone may run in mixed precision; the search and maps do not
            b, h, w, d = emb.shape
            queries = emb.reshape(-1, d)
            dists, nn_idx = self._index.search(self.memory_bank, queries, self.num_neighbors)
            patch_scores = dists.mean(1).view(b, h * w)
            scores = self._image_scores(queries.view(b, h * w, d), patch_scores, nn_idx[:, 0].view(b, h * w))
            maps = upsample_maps(patch_scores.view(b, h, w), images.shape[-2:], self.sigma)
        return Prediction(scores=scores, maps=maps)

    def _image_scores(self, queries: torch.Tensor, patch_scores: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
        """Paper eq. 7: s = (1 - exp||m_test* - m*|| / Σ_{m ∈ N_b(m*)} exp||m_test* - m||) · s*, where m_test*
        is the most anomalous test patch, m* its nearest bank patch and N_b(m*) the b nearest bank patches of
        m* (itself included). The factor lies in [1 - 1/b, 1): s* is kept when m*'s neighbours are much
        farther from the test patch than m* (m* is an isolated bank entry, so the match says little about
        normality), and lowered when the test patch sits inside a dense nominal neighbourhood."""
        s_star, where = patch_scores.max(1)
        rows = torch.arange(queries.shape[0])
        test_patch = queries[rows, where]  # [B, d]
        m_star = self.memory_bank[nearest[rows, where]]  # [B, d]
        b = min(self.reweight_neighbors, self.memory_bank.shape[0])
        if b < 2:
            return s_star
        _, support = self._index.search(self.memory_bank, m_star, b)  # [B, b]; m* itself first
        d = torch.linalg.vector_norm(self.memory_bank[support] - test_patch.unsqueeze(1), dim=-1)
        # m* is the test patch's nearest bank patch: its entry is the smallest distance wherever it sits
        weight = 1.0 - torch.softmax(d, dim=1).gather(1, d.argmin(1, keepdim=True)).squeeze(1)
        return weight * s_star
