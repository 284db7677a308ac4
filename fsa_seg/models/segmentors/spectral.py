"""CASS's spectral graph distillation and object-presence text adjustment, step by step as the
official code (MICV-yonsei/CASS @228ecdd, ``clip/model.py`` and ``cass_segmentor.py``) computes
them, including its dtypes: eigenvalues and the low-rank SVD in float64, the head-matching cost
and the distillation weight in float32, the neighbourhood term Ω in float32.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform
from torch import Tensor


def rescale_to_range(x: Tensor, like: Tensor) -> Tensor:
    """Min-max rescale ``x`` to the (global) range of ``like``."""
    return (x - x.min()) / (x.max() - x.min()) * (like.max() - like.min()) + like.min()


def top_spectra(graphs: Tensor, k: int) -> Tensor:
    """Per head, the k largest eigenvalues of a symmetric graph (float64), L2-normalised."""
    spectra = []
    for graph in graphs.double():
        values = torch.sort(torch.linalg.eigvalsh(graph), descending=True).values
        spectra.append(values[:k])
    return F.normalize(torch.stack(spectra), p=2, dim=1)


def matching_cost(dino_spectra: Tensor, clip_spectra: Tensor) -> Tensor:
    """cost[i, j] = 1 − W₁(DINO head i, CLIP head j) between the L1-normalised spectra, float32.

    Entry by entry with the official operations: the matching ties between permutations (the
    spec's §6), so its float32 values must be bit-identical to the official ones."""
    heads = dino_spectra.shape[0]
    cost = torch.zeros(heads, heads, device=dino_spectra.device)
    for i in range(heads):
        dino = F.normalize(dino_spectra[i:i + 1], p=1, dim=-1)
        for j in range(heads):
            clip = F.normalize(clip_spectra[j:j + 1], p=1, dim=-1)
            cost[i, j] = 1 - torch.sum(torch.abs(torch.sort(dino).values
                                                 - torch.sort(clip).values))
    return cost


def low_rank_graph(graph: Tensor, rank: int, niter: int, stretch: bool) -> Tensor:
    """Rank-``rank`` randomized SVD of a DINO graph (float64, draws from the global RNG), its
    singular values optionally stretched (s_min → s_min/2, s_max → 1.5·s_max), diagonal 0."""
    u, s, v = torch.svd_lowrank(graph.double(), q=rank, niter=niter)
    if stretch:
        s_min, s_max = s.min(), s.max()
        s = (s - s_min) / (s_max - s_min) * (1.5 * s_max - 0.5 * s_min) + 0.5 * s_min
    approx = u @ torch.diag(s) @ v.T
    return approx.fill_diagonal_(0)


def distil_graphs(clip_graphs: Tensor, dino_graphs: Tensor, k_eigen: int, scale_factor: float,
                  rank: int, niter: int, stretch: bool) -> Tensor:
    """CASS's combined key graphs (H, N, N) of one crop, in the dtype of ``clip_graphs``.

    Heads are paired by ``linear_sum_assignment`` on the spectral cost (which minimises it, so
    pairs the most different spectra). The official loop combines CLIP head ``idx`` with DINO
    head ``col[idx]`` but weighs it with the cost of (DINO ``idx``, CLIP ``col[idx]``): that index
    swap is reproduced. One randomized SVD per head, heads in order."""
    cost = matching_cost(top_spectra(dino_graphs, k_eigen), top_spectra(clip_graphs, k_eigen))
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    combined = torch.zeros_like(clip_graphs)
    for idx in range(clip_graphs.shape[0]):
        weight = 1 - cost[rows[idx], cols[idx]]                         # float32, as there
        clip_graph = clip_graphs[rows[idx]]
        dino_graph = rescale_to_range(low_rank_graph(dino_graphs[cols[idx]], rank, niter,
                                                     stretch), clip_graph)
        combined[idx] = ((weight * scale_factor * dino_graph + clip_graph)
                         / (weight * scale_factor + 1))
    return combined


def ward_clusters(text: Tensor, threshold: float) -> np.ndarray:
    """Cluster id (0…K−1) of each text query: Ward linkage on cosine distances (as Euclidean),
    cut at ``threshold`` (scipy, float64), as sklearn's ``cosine_distances`` computes them."""
    x = text.detach().double().cpu().numpy()
    x = x / np.sqrt(np.einsum('ij,ij->i', x, x))[:, None]
    distances = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    distances = (distances + distances.T) / 2    # exactly symmetric, as squareform requires
    if len(x) == 1:
        return np.zeros(1, dtype=np.int64)
    tree = linkage(squareform(distances, checks=False), method='ward')
    return fcluster(tree, t=threshold, criterion='distance') - 1


def adjust_text(features: Tensor, text: Tensor, global_sim: Tensor, clusters: Tensor,
                alpha: float, topk: int) -> Tensor:
    """CASS's object-presence text adjustment, for a batch of crops at once.

    Args:
        features: (b, N, D) L2-normalised patch features of each crop.
        text: (Q, D) query embeddings.
        global_sim: (b, Q) similarity of each crop's global (CLS) embedding with the queries.
        clusters: (K, Q) bool, membership of each query in each Ward cluster.
        alpha: weight of the mean feature (``mean_vector_weight``).
        topk: patches averaged into the mean feature.

    Returns (b, Q, D): in each cluster, the query most similar to the global embedding (the
    first on ties) moves towards the mean of its ``topk`` most similar patches; the other rows
    are ``text``."""
    masked = global_sim[:, None, :].masked_fill(~clusters, float('-inf'))    # (b, K, Q)
    chosen = masked.argmax(dim=-1)                                           # (b, K)
    chosen_text = F.normalize(text[chosen], dim=-1)                          # (b, K, D)
    scores = F.normalize(features, dim=-1) @ chosen_text.transpose(1, 2)     # (b, N, K)
    top = scores.topk(min(topk, features.shape[1]), dim=1).indices           # (b, k, K)
    picked = torch.gather(features[:, :, None, :].expand(-1, -1, top.shape[-1], -1), 1,
                          top[..., None].expand(-1, -1, -1, features.shape[-1]))
    mean = F.normalize(picked.mean(dim=1), dim=-1)                           # (b, K, D)
    adjusted = F.normalize((1 - alpha) * chosen_text + alpha * mean, dim=-1)
    out = text.expand(len(features), -1, -1).clone()
    return out.scatter_(1, chosen[..., None].expand_as(adjusted), adjusted)
