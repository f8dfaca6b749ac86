"""The plan of a generate job: shards, the chunks inside them (the unit of GPU batching), and the
seeds, latents and edits of each chunk. Pure functions of the config: no Ray, no I/O.

Row identifiers and seeds (every row can be regenerated from what it stores):
    row_index   = source_index * K + variant      (global, the sort order of the files)
    latent_seed = derive_seed(seed, Stream.GENERATE, source_index)
    edit_seed   = derive_seed(latent_seed, Stream.GENERATE, variant)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.core.policies import EditPolicy
from pipeline.core.seeding import Stream, derive_seed


@dataclass(frozen=True)
class Plan:
    n_sources: int
    variants: int
    shard_sources: int
    batch_sources: int

    @property
    def n_shards(self) -> int:
        return -(-self.n_sources // self.shard_sources)

    def shard_sources_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_sources
        return start, min(self.n_sources, start + self.shard_sources)

    def shard_rows(self, shard: int) -> int:
        a, b = self.shard_sources_range(shard)
        return (b - a) * self.variants

    def shard_name(self, shard: int) -> str:
        return f"part-{shard:05d}-of-{self.n_shards:05d}"

    def chunks(self, shards) -> np.ndarray:
        """[C, 3] int64 (shard, first source, end source) of the given shards' chunks, in order."""
        rows = []
        for shard in shards:
            a, b = self.shard_sources_range(shard)
            starts = np.arange(a, b, self.batch_sources)
            rows.append(np.stack([np.full_like(starts, shard), starts,
                                  np.minimum(starts + self.batch_sources, b)], axis=1))
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), np.int64)


def chunk_seeds(job_seed: int, K: int, policy: EditPolicy, shard: int, src_start: int, src_stop: int
                ) -> dict[str, Any]:
    """Seeds, ids and edits s [b, N] of one chunk (sources src_start..src_stop-1, all variants)."""
    sources = np.arange(src_start, src_stop, dtype=np.int64)
    latent_seeds = np.array([derive_seed(job_seed, Stream.GENERATE, int(i)) for i in sources], dtype=np.int64)
    slot = np.repeat(np.arange(len(sources), dtype=np.int32), K)
    variant = np.tile(np.arange(K, dtype=np.int32), len(sources))
    edit_seeds = np.array([derive_seed(int(latent_seeds[j]), Stream.GENERATE, int(v)) for j, v in zip(slot, variant)],
                          dtype=np.int64)
    return {"shard": shard, "source_ids": sources, "latent_seeds": latent_seeds,
            "slot": slot, "source_index": sources[slot], "variant": variant,
            "row_index": sources[slot] * K + variant, "latent_seed": latent_seeds[slot], "edit_seed": edit_seeds,
            "s": policy.edits(edit_seeds, variant)}


def chunk_latents(job_seed: int, K: int, z_dim: int, policy: EditPolicy, shard: int, src_start: int,
                  src_stop: int) -> dict[str, Any]:
    """chunk_seeds plus z [u, z_dim] (random faces: z ~ N(0, I) from each source's latent seed)."""
    chunk = chunk_seeds(job_seed, K, policy, shard, src_start, src_stop)
    z = torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s)))
                     for s in chunk["latent_seeds"]])
    return {**chunk, "z": z.numpy()}


def chunk_source_latents(job_seed: int, K: int, policy: EditPolicy, sources, shard: int, src_start: int,
                         src_stop: int) -> dict[str, Any]:
    """chunk_seeds plus the sources' latents wplus [u, L, w_dim] (and noise maps, flattened, when the
    sources have them)."""
    chunk = chunk_seeds(job_seed, K, policy, shard, src_start, src_stop)
    wplus, noise = sources.latents(chunk["source_ids"])
    chunk["wplus"] = wplus
    if noise is not None:
        chunk["noise_flat"] = np.concatenate([n.reshape(len(n), -1) for n in noise], axis=1)
    return chunk


# ---------------------------------------------------------------------------------------------
# Batches of chunks (ragged arrays in object columns)
# ---------------------------------------------------------------------------------------------

def object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


def split_chunks(batch: dict) -> list[dict]:
    n = len(batch["shard"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def pack_chunks(chunks: list[dict]) -> dict:
    """One Ray row per chunk: scalar columns as int64, array columns as object arrays (ragged OK)."""
    keys = chunks[0].keys()
    return {k: (np.array([c[k] for c in chunks], dtype=np.int64) if np.ndim(chunks[0][k]) == 0
                else object_array([np.asarray(c[k]) for c in chunks])) for k in keys}


def concat_rows(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def plan_latents(batch: dict, job_seed: int, K: int, z_dim: int, policy: EditPolicy, chunks: np.ndarray,
                 sources=None) -> dict:
    """Ray map_batches fn: chunk positions (column `data`) -> chunk rows with seeds, z (or the sources'
    latents) and s."""
    if sources is not None:
        return pack_chunks([chunk_source_latents(job_seed, K, policy, sources, *map(int, chunks[int(i)]))
                            for i in batch["data"]])
    return pack_chunks([chunk_latents(job_seed, K, z_dim, policy, *map(int, chunks[int(i)])) for i in batch["data"]])
