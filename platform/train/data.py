"""Training data: what a dataset holds (read from Parquet metadata and small columns on the driver), the Ray
Datasets that feed the Train workers, and the per-example transforms that run inside Ray Data.

Examples are made in Ray Data map tasks, so the Train workers only step the model:
- diffusion: a random window of `window_frames` mel frames (64 = 4.16 s) from a chunk, with a condition:
  a random frame's CLIP image embedding of the same chunk (variant "image"), the label's CLIP text
  embedding ("text"), or either with probability 1/2 per example ("hybrid");
- HiFi-GAN: a random segment of `segment_frames x hop` samples of the chunk's 16 kHz audio; the worker
  computes the matching mel on its device.
Each chunk yields `repeat` examples per pass, so that a tiny dataset still makes passes long enough that
the per-pass start-up of the streaming split does not dominate.

A dataset whose share per worker fits in memory (`--cache-in-worker auto`) skips the passes altogether:
each worker reads its share of the rows once from Ray Data (`CachedRows`) and cuts examples from rows drawn
uniformly at random, step after step (`cached_batches`), with the same transforms. On 2 cores a streamed
pass stalls the step for seconds at every boundary and its map tasks take CPU from the step in between.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from clipsynth_platform.datasets.schema import split_dir
from clipsynth_platform.runtime.preflight import ClusterView
from clipsynth_platform.runtime.uri import fsspec_filesystem, is_s3, pyarrow_filesystem, strip_scheme

if TYPE_CHECKING:
    import ray.data

DIFFUSION_COLUMNS = ["chunk_id", "mel", "n_mels", "mel_frames", "image_embeddings", "embed_dim", "text_embedding"]
VOCODER_COLUMNS = ["chunk_id", "audio"]
MAX_EMPTY_DRAWS = 100  # draws of a cached batch that may yield no example before the shard counts as unusable
SAMPLE_LABELS = 4  # default number of labels whose text embeddings condition the periodic samples


class DatasetError(ValueError):
    """The dataset cannot feed this training job (missing files, columns, audio, text, mixed CLIPs)."""


@dataclass
class DatasetInfo:
    """Facts about the train split that configure a run (all JSON-serialisable), read once from the shards."""

    uri: str
    files: list[str]  # full URIs of the train shards
    num_rows: int
    embed_dim: int
    clip_model: str  # CLIP identity "{model}/{pretrained}" of the stored embeddings
    min_mel_frames: int
    n_mels: int
    labels: list[str] = field(default_factory=list)
    rows_with_text: int | None = None  # None: the Parquet statistics did not say
    rows_with_audio: int | None = None
    column_bytes: dict[str, int] = field(default_factory=dict)  # uncompressed bytes of each column, all shards
    label_rows: dict[str, list[int]] = field(default_factory=dict)  # a label -> [file index, row] of its first row

    @property
    def clip_model_name(self) -> str:
        return self.clip_model.split("/", 1)[0]

    @property
    def clip_pretrained(self) -> str:
        parts = self.clip_model.split("/", 1)
        return parts[1] if len(parts) > 1 else "none"


def list_train_files(uri: str) -> list[str]:
    """URIs of root/train/*.parquet, sorted; DatasetError when there are none."""
    train = split_dir(uri, "train")
    fs = fsspec_filesystem(uri)
    found = sorted(fs.glob(strip_scheme(train) + "/*.parquet"))
    if not found:
        raise DatasetError(
            f"no training shards at {train}/*.parquet: --data must point at a preprocessed dataset "
            "(the output root of the ingestion job, or platform.synthetic.write_synthetic_dataset)"
        )
    return [f"s3://{p}" if is_s3(uri) else p for p in found]


def _non_null_rows(meta: pq.FileMetaData, column: str) -> int | None:
    """Rows whose list column `column` is not null, from the row-group statistics (None when absent).

    The leaf's null count counts null lists (our lists never hold null elements), so rows - nulls is exact.
    """
    total = 0
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        found = None
        for j in range(group.num_columns):
            col = group.column(j)
            if col.path_in_schema.split(".")[0] == column:
                found = col
                break
        if found is None or found.statistics is None or not found.statistics.has_null_count:
            return None
        total += group.num_rows - found.statistics.null_count
    return total


REQUIRED_COLUMNS = ("mel", "n_mels", "mel_frames", "image_embeddings", "embed_dim", "clip_model")
SHARD_READERS = 16  # shards described at once: their footers and small columns are small reads, mostly waiting


@dataclass
class _ShardFacts:
    """What one shard contributes to the dataset's description (its footer and small columns)."""

    num_rows: int
    embed_dims: set[int]
    clip_models: set[str]
    n_mels: set[int]
    min_frames: int | None
    label_rows: dict[str, int]  # each label's first row
    labels: set[str]
    rows_with_text: int | None
    rows_with_audio: int | None
    column_bytes: dict[str, int]


def _describe_shard(uri: str, fs: Any) -> _ShardFacts:
    pf = pq.ParquetFile(strip_scheme(uri), filesystem=fs)
    names = set(pf.schema_arrow.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DatasetError(
            f"shard {uri} lacks columns {missing}; is it a CLIPSynth dataset (platform/datasets/schema.py)?"
        )
    meta = pf.metadata
    column_bytes: dict[str, int] = {}
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for j in range(group.num_columns):
            col = group.column(j)
            name = col.path_in_schema.split(".")[0]
            column_bytes[name] = column_bytes.get(name, 0) + col.total_uncompressed_size
    small = pf.read(columns=["embed_dim", "clip_model", "n_mels", "mel_frames", "label"])
    labels = small.column("label").to_pylist()
    label_rows: dict[str, int] = {}
    for row, label in enumerate(labels):
        if label and label not in label_rows:
            label_rows[label] = row
    has_text = "text_embedding" in names
    frames = small.column("mel_frames").to_pylist()
    return _ShardFacts(
        num_rows=meta.num_rows,
        embed_dims=set(small.column("embed_dim").to_pylist()),
        clip_models=set(small.column("clip_model").to_pylist()),
        n_mels=set(small.column("n_mels").to_pylist()),
        min_frames=min(frames) if frames else None,
        label_rows=label_rows,
        labels={v for v in labels if v},
        rows_with_text=_non_null_rows(meta, "text_embedding") if has_text else 0,
        rows_with_audio=_non_null_rows(meta, "audio") if "audio" in names else 0,
        column_bytes=column_bytes,
    )


def _sum_or_unknown(counts: list[int | None]) -> int | None:
    return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


def inspect_dataset(uri: str, readers: int = SHARD_READERS) -> DatasetInfo:
    """Read what a run needs to know from the train shards, each opened once, `readers` at a time: sizes, CLIP
    identity, labels (and where a text embedding of each is), rows with text and audio, each column's bytes."""
    files = list_train_files(uri)
    fs, _ = pyarrow_filesystem(uri)
    with ThreadPoolExecutor(max_workers=max(1, min(readers, len(files)))) as pool:
        shards = list(pool.map(lambda f: _describe_shard(f, fs), files))
    num_rows = sum(s.num_rows for s in shards)
    if num_rows == 0:
        raise DatasetError(f"the train split of {uri} has no rows")
    embed_dims = set().union(*(s.embed_dims for s in shards))
    clip_models = set().union(*(s.clip_models for s in shards))
    n_mels = set().union(*(s.n_mels for s in shards))
    if len(embed_dims) != 1:
        raise DatasetError(f"shards mix CLIP embedding widths {sorted(embed_dims)}; train on one CLIP's embeddings")
    if len(clip_models) != 1:
        raise DatasetError(f"shards mix CLIP models {sorted(clip_models)}; train on one CLIP's embeddings")
    if len(n_mels) != 1:
        raise DatasetError(f"shards mix mel band counts {sorted(n_mels)}")
    column_bytes: dict[str, int] = {}
    label_rows: dict[str, list[int]] = {}
    for i, shard in enumerate(shards):
        for name, size in shard.column_bytes.items():
            column_bytes[name] = column_bytes.get(name, 0) + size
        for label, row in shard.label_rows.items():
            label_rows.setdefault(label, [i, row])
    frames = [s.min_frames for s in shards if s.min_frames is not None]
    return DatasetInfo(
        uri=uri,
        files=files,
        num_rows=num_rows,
        embed_dim=int(embed_dims.pop()),
        clip_model=str(clip_models.pop()),
        min_mel_frames=int(min(frames) if frames else 0),
        n_mels=int(n_mels.pop()),
        labels=sorted(set().union(*(s.labels for s in shards))),
        rows_with_text=_sum_or_unknown([s.rows_with_text for s in shards]),
        rows_with_audio=_sum_or_unknown([s.rows_with_audio for s in shards]),
        column_bytes=column_bytes,
        label_rows=label_rows,
    )


def label_text_embeddings(info: DatasetInfo, max_labels: int = SAMPLE_LABELS) -> dict[str, list[float]]:
    """Stored CLIP text embeddings of up to `max_labels` labels (the first in sorted order that have one), each
    from the row group that holds the label's first row (a row without one, rare, skips that label)."""
    fs, _ = pyarrow_filesystem(info.uri)
    out: dict[str, list[float]] = {}
    for label in info.labels:
        if len(out) >= max(0, max_labels) or label not in info.label_rows:
            continue
        file_index, row = info.label_rows[label]
        pf = pq.ParquetFile(strip_scheme(info.files[file_index]), filesystem=fs)
        if "text_embedding" not in pf.schema_arrow.names:
            continue
        group, _ = _row_group_of(pf.metadata, row)
        table = pf.read_row_group(group, columns=["label", "text_embedding"])
        for name, emb in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
            if name == label and emb is not None:
                out[label] = [float(x) for x in emb]
                break
    return out


def _row_group_of(meta: pq.FileMetaData, row: int) -> tuple[int, int]:
    """(row group, row within it) of a file's row."""
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if row < rows:
            return group, row
        row -= rows
    raise IndexError(f"row beyond the file's {meta.num_rows} rows")


def first_rows(info: DatasetInfo, columns: list[str], count: int) -> list[dict]:
    """The first `count` rows of the train split (a fixed, reproducible choice), only `columns`."""
    fs, _ = pyarrow_filesystem(info.uri)
    rows: list[dict] = []
    for f in info.files:
        pf = pq.ParquetFile(strip_scheme(f), filesystem=fs)
        for batch in pf.iter_batches(columns=columns, batch_size=max(1, count)):
            rows.extend(batch.to_pylist())
            if len(rows) >= count:
                return rows[:count]
    return rows


def diffusion_columns(variant: str) -> list[str]:
    """The columns a diffusion run reads (image-trained runs never need the text embeddings)."""
    return [c for c in DIFFUSION_COLUMNS if c != "text_embedding" or variant != "image"]


def column_bytes(info: DatasetInfo, columns: list[str]) -> int:
    """Uncompressed bytes of `columns` over the train shards (from the description: no file is read)."""
    return sum(info.column_bytes.get(c, 0) for c in set(columns))


def should_cache(mode: str, share_bytes: float, max_mb: float) -> bool:
    """--cache-in-worker: "on", "off", or "auto" (a worker's share of the columns under max_mb megabytes)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"cache mode must be auto, on or off, got {mode!r}")
    return mode == "on" or (mode == "auto" and share_bytes <= max_mb * 1e6)


CACHE_MEMORY_SHARE = 0.25  # of a worker's part of its node's memory: the model, Ray Data's stages and the
# object store need the rest
FALLBACK_CACHE_MB = 1024.0


def cache_budget_mb(view: ClusterView | None, worker: Mapping[str, float], share: float = CACHE_MEMORY_SHARE) -> float:
    """--cache-max-mb 0: the row cache a worker may hold, `share` of its part of the memory Ray reports for the
    nodes that can hold a worker (the smallest such part, as workers may land on any of them); 1024 MB when Ray
    reports no such node (a cluster that scales up from nothing)."""
    parts = []
    for node in view.nodes if view is not None else ():
        fits = min((float(node.get(r, 0)) // need for r, need in worker.items() if need > 0), default=0.0)
        if fits >= 1 and node.get("memory"):
            parts.append(float(node["memory"]) / fits)
    return share * min(parts) / 1e6 if parts else FALLBACK_CACHE_MB


MAP_BATCHES_PER_PASS = 2000  # Ray Data tasks a streamed pass is cut into, at most (when rows allow)


def map_batch_rows(num_rows: int, smallest: int = 8, largest: int = 256) -> int:
    """Rows per Ray Data map batch of a streamed pass: small batches keep blocks small, so the streaming split
    hands examples out evenly (8 rows, on small datasets); on a large one, enough rows that a pass makes at most
    about MAP_BATCHES_PER_PASS tasks (VGG-Sound's 200,000 chunks: 100 rows, 2,000 tasks instead of 25,000)."""
    return int(min(largest, max(smallest, math.ceil(num_rows / MAP_BATCHES_PER_PASS))))


def repeat_factor(num_rows: int, windows_per_chunk: int, min_examples_per_pass: int) -> int:
    """Examples drawn per chunk per pass: at least `windows_per_chunk`, more for small datasets."""
    return max(int(windows_per_chunk), math.ceil(max(0, min_examples_per_pass) / max(1, num_rows)))


# ------------------------------------------------------------------------------------------- transforms
def _cell(column, i: int) -> np.ndarray | None:
    v = column[i]
    return None if v is None else np.asarray(v, dtype=np.float32)


def diffusion_examples(
    batch: dict[str, np.ndarray], *, variant: str, window_frames: int, repeat: int = 1, seed: int | None = None
) -> dict[str, np.ndarray]:
    """Chunks -> `repeat` examples each: {"mel": [n, n_mels, window_frames], "cond": [n, embed_dim]} float32.

    Text conditions need the row's label text embedding: rows without one are dropped for "text"; for
    "hybrid" they fall back to a frame embedding.
    """
    if variant not in ("image", "text", "hybrid"):
        raise ValueError(f"unknown variant {variant!r}")
    rng = np.random.default_rng(seed)
    mels: list[np.ndarray] = []
    conds: list[np.ndarray] = []
    n = len(batch["mel"])
    for i in range(n):
        n_mels, frames, dim = int(batch["n_mels"][i]), int(batch["mel_frames"][i]), int(batch["embed_dim"][i])
        mel = np.asarray(batch["mel"][i], dtype=np.float32).reshape(n_mels, frames)
        if frames < window_frames:
            raise ValueError(
                f"chunk {batch['chunk_id'][i]} has {frames} mel frames, fewer than the {window_frames}-frame window"
            )
        images = np.asarray(batch["image_embeddings"][i], dtype=np.float32).reshape(-1, dim)
        text = _cell(batch["text_embedding"], i) if "text_embedding" in batch else None
        if variant == "text" and text is None:
            continue
        if len(images) == 0 and variant != "text":
            raise ValueError(f"chunk {batch['chunk_id'][i]} has no frame embeddings")
        for _ in range(repeat):
            start = int(rng.integers(0, frames - window_frames + 1))
            mels.append(mel[:, start : start + window_frames])
            use_text = variant == "text" or (variant == "hybrid" and text is not None and rng.random() < 0.5)
            conds.append(text if use_text and text is not None else images[int(rng.integers(0, len(images)))])
    if not mels:
        dim = int(batch["embed_dim"][0]) if n else 0
        n_mels = int(batch["n_mels"][0]) if n else 0
        return {
            "mel": np.zeros((0, n_mels, window_frames), np.float32),
            "cond": np.zeros((0, dim), np.float32),
        }
    return {"mel": np.stack(mels).astype(np.float32), "cond": np.stack(conds).astype(np.float32)}


def vocoder_examples(
    batch: dict[str, np.ndarray], *, segment_samples: int, repeat: int = 1, seed: int | None = None
) -> dict[str, np.ndarray]:
    """Chunks -> `repeat` random waveform segments each: {"audio": [n, segment_samples]} float32 in [-1, 1).

    Rows without audio are dropped (the driver refuses a dataset that has none at all); audio shorter than
    a segment is zero-padded at the end.
    """
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for i in range(len(batch["audio"])):
        pcm = batch["audio"][i]
        if pcm is None:
            continue
        wave = np.asarray(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        if len(wave) < segment_samples:
            wave = np.pad(wave, (0, segment_samples - len(wave)))
        for _ in range(repeat):
            start = int(rng.integers(0, len(wave) - segment_samples + 1))
            out.append(wave[start : start + segment_samples])
    if not out:
        return {"audio": np.zeros((0, segment_samples), np.float32)}
    return {"audio": np.stack(out)}


# ------------------------------------------------------------------------------------------ Ray Datasets
def read_train_dataset(info: DatasetInfo, columns: list[str]) -> ray.data.Dataset:
    """The train shards as a Ray Dataset of `columns` (file order shuffled every pass)."""
    import ray.data

    fs, _ = pyarrow_filesystem(info.uri)
    paths = [strip_scheme(f) for f in info.files]
    return ray.data.read_parquet(paths, filesystem=fs, columns=columns, shuffle="files")


def diffusion_dataset(info: DatasetInfo, *, variant: str, window_frames: int, repeat: int) -> ray.data.Dataset:
    ds = read_train_dataset(info, diffusion_columns(variant))
    return ds.map_batches(
        diffusion_examples,  # type: ignore[arg-type]  # keyword arguments come in fn_kwargs, which Ray's stub ignores
        fn_kwargs={"variant": variant, "window_frames": window_frames, "repeat": repeat},
        batch_format="numpy",
        batch_size=map_batch_rows(info.num_rows),
        zero_copy_batch=True,
    )


def vocoder_dataset(info: DatasetInfo, *, segment_samples: int, repeat: int) -> ray.data.Dataset:
    ds = read_train_dataset(info, VOCODER_COLUMNS)
    return ds.map_batches(
        vocoder_examples,  # type: ignore[arg-type]  # keyword arguments come in fn_kwargs, which Ray's stub ignores
        fn_kwargs={"segment_samples": segment_samples, "repeat": repeat},
        batch_format="numpy",
        batch_size=map_batch_rows(info.num_rows),
        zero_copy_batch=True,
    )


def endless_batches(shard: Any, batch_size: int, shuffle_buffer: int = 0, device: Any = None) -> Iterator[dict]:
    """Full batches of `batch_size` examples (dicts of tensors) from a Train dataset shard, pass after pass.

    Batches may span the end of a pass. Every rank gets the same number of examples per pass (the split is
    equal), so all ranks cross pass boundaries at the same step, as the streaming split requires.
    """
    import torch

    pending: dict[str, list] = {}
    held = 0
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(
            batch_size=batch_size,
            local_shuffle_buffer_size=shuffle_buffer or None,
            device=device if device is not None else "auto",
        ):
            count = len(next(iter(batch.values())))
            seen += count
            for k, v in batch.items():
                pending.setdefault(k, []).append(v)
            held += count
            while held >= batch_size:
                merged = {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in pending.items()}
                yield {k: v[:batch_size] for k, v in merged.items()}
                held -= batch_size
                pending = {k: [v[batch_size:]] for k, v in merged.items()} if held else {}
        if seen == 0:
            raise DatasetError("a pass over this worker's data shard yielded no examples")


# ------------------------------------------------------------------------------------- cached in a worker
ExampleMaker = Callable[[dict[str, list], int], dict[str, np.ndarray]]  # (rows, seed) -> examples


class CachedRows:
    """A worker's share of the train split, read once from its dataset shard and held in memory as columns."""

    def __init__(self, columns: dict[str, list]) -> None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1 or not lengths.pop():
            raise DatasetError("this worker's data shard holds no rows (or columns of unequal length)")
        self.columns = columns

    @classmethod
    def from_shard(cls, shard: Any, rows_per_batch: int = 64) -> CachedRows:
        """Iterate the shard once (every rank must, as the streaming split requires) and keep its rows."""
        columns: dict[str, list] = {}
        for batch in shard.iter_batches(batch_size=rows_per_batch, batch_format="numpy"):
            for name, values in batch.items():
                columns.setdefault(name, []).extend(values)
        return cls(columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def take(self, rows: np.ndarray) -> dict[str, list]:
        return {name: [values[i] for i in rows] for name, values in self.columns.items()}


def cached_batches(
    rows: CachedRows, make_examples: ExampleMaker, batch_size: int, seed: int, device: Any = None
) -> Iterator[dict]:
    """Full batches of `batch_size` examples (dicts of tensors), each cut from rows drawn uniformly at random.

    A transform may drop rows (text-trained runs skip rows without a label embedding): rows are drawn again
    until the batch is full; a shard that yields nothing in MAX_EMPTY_DRAWS draws raises DatasetError.
    """
    import torch

    rng = np.random.default_rng(seed)
    while True:
        parts: list[dict[str, np.ndarray]] = []
        held, empty = 0, 0
        while held < batch_size:
            drawn = rng.integers(0, len(rows), batch_size - held)
            examples = make_examples(rows.take(drawn), int(rng.integers(0, 2**63 - 1)))
            count = len(next(iter(examples.values())))
            if count == 0:
                empty += 1
                if empty >= MAX_EMPTY_DRAWS:
                    raise DatasetError(f"{MAX_EMPTY_DRAWS} draws from this worker's cached rows made no example")
                continue
            parts.append(examples)
            held += count
        merged = {k: np.concatenate([p[k] for p in parts])[:batch_size] for k in parts[0]}
        yield {k: _to_device(torch.from_numpy(v), device) for k, v in merged.items()}


def _to_device(tensor: Any, device: Any) -> Any:
    """A batch to the step's device: on CUDA from page-locked memory and without waiting (the copy overlaps the
    step before it; torch's pinned-memory allocator keeps the buffer until the copy is done)."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def training_batches(
    shard: Any,
    *,
    cached: bool,
    make_examples: ExampleMaker,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    device: Any = None,
) -> Iterator[dict]:
    """The batches a Train worker steps on: cut in the worker from its cached rows, or streamed from Ray Data
    (whose map tasks already made the examples)."""
    if cached:
        return cached_batches(CachedRows.from_shard(shard), make_examples, batch_size, seed, device)
    return endless_batches(shard, batch_size, shuffle_buffer, device)
