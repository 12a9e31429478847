"""Batch semantics at any scale: the global batch over 1, 8 or 64 workers and its errors, gradient accumulation
over micro-batches (under DDP's no_sync) equal to the whole batch, a random stream per rank, the data's
description read once per shard and in parallel, map batches and the row cache sized to the data and the
workers' memory."""

from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist

from clipsynth_core import ConditionalUNet, DiffusionConfig, GaussianDiffusion, unet_config
from clipsynth_core.training import DiffusionStep
from clipsynth_platform.datasets.synthetic import write_synthetic_dataset
from clipsynth_platform.runtime.preflight import ClusterView
from clipsynth_platform.train import data
from clipsynth_platform.train.config import BatchPlan, DiffusionTrainConfig, HiFiGANTrainConfig
from clipsynth_platform.train.runner import prepare_diffusion
from clipsynth_platform.train.worker import RankStreams


# ----------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    ("workers", "per_worker", "microbatch", "accumulation"),
    [(1, 128, 32, 4), (8, 16, 16, 1), (64, 2, 2, 1)],
)
def test_the_papers_batch_on_1_8_and_64_workers(workers, per_worker, microbatch, accumulation):
    # the default: improved-diffusion's global batch of 128 whatever the number of workers
    cfg = DiffusionTrainConfig(data="d", num_workers=workers, microbatch=32 if workers == 1 else 0)
    plan = cfg.batch_plan()
    assert (plan.global_size, plan.workers, plan.per_worker, plan.microbatch) == (128, workers, per_worker, microbatch)
    assert plan.accumulation == accumulation and plan.per_worker * plan.workers == 128
    assert plan.to_dict() == {
        "global_size": 128,
        "workers": workers,
        "per_worker": per_worker,
        "microbatch": microbatch,
        "accumulation": accumulation,
    }


def test_batch_sizes_given_either_way_and_the_errors():
    # --batch-size alone keeps its old meaning (per worker); the global batch follows from it
    assert DiffusionTrainConfig(data="d", num_workers=8, batch_size=4).batch_plan().global_size == 32
    assert DiffusionTrainConfig(data="d", num_workers=0, global_batch_size=48).batch_plan().per_worker == 48
    assert HiFiGANTrainConfig(data="d", num_workers=4).batch_plan().per_worker == 4  # HiFi-GAN V1's 16 over 4
    both = DiffusionTrainConfig(data="d", num_workers=8, batch_size=16, global_batch_size=128)
    assert both.batch_plan().per_worker == 16
    with pytest.raises(ValueError, match=r"a global batch of 128 does not divide over 3 workers: use a multiple of 3 "):
        DiffusionTrainConfig(data="d", num_workers=3).check()
    with pytest.raises(ValueError, match=r"such as 126 or 129"):
        BatchPlan.resolve(global_size=128, per_worker=None, workers=3, microbatch=None, default_global=128)
    with pytest.raises(ValueError, match=r"--batch-size 8 on 8 workers is a global batch of 64, not the "):
        DiffusionTrainConfig(data="d", num_workers=8, batch_size=8, global_batch_size=128).check()
    with pytest.raises(ValueError, match=r"--microbatch 24 does not divide a worker's batch of 16 .* of 16"):
        DiffusionTrainConfig(data="d", num_workers=8, microbatch=24).check()
    with pytest.raises(ValueError, match=r"--microbatch must be >= 0"):
        DiffusionTrainConfig(data="d", microbatch=-1).check()


# -------------------------------------------------------------------------------------- accumulation
@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one rank (no network), so a model can be wrapped in DDP and use no_sync."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _one_step(microbatch: int, ddp: bool) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], int]:
    """One DiffusionStep with SGD at lr 1 (the update is minus the gradient); returns the loss terms, the
    gradient of every parameter and the number of forward passes."""
    torch.manual_seed(0)
    model = ConditionalUNet(unet_config("tiny", cond_dim=16))  # dropout 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-zero output layers: every parameter gets a gradient
    before = [p.detach().clone() for p in model.parameters()]
    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))
    wrapped = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True) if ddp else model
    step = DiffusionStep(
        wrapped,
        GaussianDiffusion.from_config(DiffusionConfig(num_steps=50)),
        torch.optim.SGD(model.parameters(), lr=1.0),
        cond_drop_prob=0.25,
        generator=torch.Generator().manual_seed(3),
        microbatch=microbatch,
    )
    g = torch.Generator().manual_seed(1)
    mel, cond = torch.rand(8, 1, 64, 16, generator=g) * 2 - 1, torch.randn(8, 16, generator=g)
    terms = step(mel, cond, 1)
    grads = [b - p.detach() for b, p in zip(before, model.parameters())]
    return terms, grads, len(passes)


@pytest.mark.slow  # 11 s on 2 shared cores: out of make test-fast
def test_micro_batches_give_the_whole_batchs_gradient(one_process_group):
    whole, whole_grads, whole_passes = _one_step(0, ddp=False)
    micro, micro_grads, micro_passes = _one_step(2, ddp=True)  # 4 passes of 2, under DDP's no_sync but the last
    assert (whole_passes, micro_passes) == (1, 4)
    for key in ("loss", "mse", "vb"):
        torch.testing.assert_close(micro[key], whole[key], rtol=1e-5, atol=1e-6)
    scale = max(float(g.abs().max()) for g in whole_grads)
    assert scale > 0
    for a, b in zip(micro_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(micro["grad_norm"], whole["grad_norm"], rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="a batch of 8 does not split into micro-batches of 3"):
        _one_step(3, ddp=False)


def test_every_rank_and_attempt_draws_its_own_streams():
    seeds = [
        getattr(RankStreams(0, rank, start), stream)
        for rank in range(64)
        for start in (0, 1, 500)
        for stream in ("noise", "data", "dropout")
    ]
    assert len(set(seeds)) == len(seeds) == 64 * 3 * 3
    assert RankStreams(0, 5, 0).noise == RankStreams(0, 5, 0).noise != RankStreams(1, 5, 0).noise
    # what the streams feed: rank 0 and rank 1 draw other dropout masks from the same model
    masks = []
    for rank in (0, 1):
        torch.manual_seed(RankStreams(0, rank, 0).dropout)
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.1))
    assert not torch.equal(masks[0], masks[1])


# ------------------------------------------------------------------------------------------ the data
@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_clip) -> str:
    """Six labels in four train shards of three rows each."""
    root = tmp_path_factory.mktemp("batch-shards")
    labels = ("violin", "cello", "flute", "trumpet", "piano", "organ")
    write_synthetic_dataset(str(root), tiny_clip, labels=labels, videos_per_label=1, chunks_per_video=2)
    whole = root / "train" / "part-00000.parquet"
    table = pq.read_table(whole)
    whole.unlink()
    for i in range(4):
        pq.write_table(table.slice(3 * i, 3), root / "train" / f"part-{i:05d}.parquet")
    return str(root)


def test_the_driver_opens_each_shard_once_and_reads_them_in_parallel(shards, monkeypatch, tmp_path):
    files = data.list_train_files(shards)
    assert len(files) >= 4
    opened: list[str] = []
    real = pq.ParquetFile

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data.pq, "ParquetFile", counting)
    # every shard's reader must be in flight at once to pass the barrier: a serial walk would time out here
    barrier = threading.Barrier(len(files), timeout=30)
    describe = data._describe_shard

    def together(uri, fs):
        barrier.wait()
        return describe(uri, fs)

    monkeypatch.setattr(data, "_describe_shard", together)
    info = data.inspect_dataset(shards)
    assert sorted(opened) == sorted(files)  # the description: each shard once
    assert info.labels == ["cello", "flute", "organ", "piano", "trumpet", "violin"]
    assert {k: v for k, v in info.column_bytes.items() if k in ("mel", "audio")} and info.column_bytes["mel"] > 0
    assert data.column_bytes(info, ["mel", "mel", "nothing"]) == info.column_bytes["mel"]  # no file read

    opened.clear()
    job, _ = prepare_diffusion(DiffusionTrainConfig(data=shards, model_size="tiny", storage_path=str(tmp_path)))
    # the whole driver side: the description, then one read for each of the 4 sample labels' text embeddings
    assert len(opened) == len(files) + 4
    assert job["sample_names"] == ["cello", "flute", "organ", "piano"]
    expected = {}
    for f in files:
        table = pq.read_table(f, columns=["label", "text_embedding"])
        for label, emb in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
            expected.setdefault(label, emb)
    for name, cond in zip(job["sample_names"], job["sample_conds"]):
        assert cond == pytest.approx(expected[name])


def test_map_batches_and_the_row_cache_follow_the_data_and_the_memory():
    assert [data.map_batch_rows(n) for n in (0, 50, 16_000, 200_000, 10**7)] == [8, 8, 8, 100, 256]
    # a node of 64 GB for Ray's tasks holds 4 GPU workers: each may cache a quarter of its 16 GB
    gpu_node = {"CPU": 32.0, "GPU": 4.0, "memory": 64e9}
    view = ClusterView(nodes=({"CPU": 4.0, "memory": 8e9}, gpu_node))  # the head has no GPU: no worker there
    assert data.cache_budget_mb(view, {"CPU": 1.0, "GPU": 1.0}) == pytest.approx(4000.0)
    assert data.cache_budget_mb(view, {"CPU": 1.0}) == pytest.approx(0.25 * 8e9 / 4 / 1e6)  # the smaller part
    assert data.cache_budget_mb(ClusterView(nodes=()), {"CPU": 1.0}) == data.FALLBACK_CACHE_MB
    assert data.cache_budget_mb(None, {"CPU": 1.0}) == data.FALLBACK_CACHE_MB
