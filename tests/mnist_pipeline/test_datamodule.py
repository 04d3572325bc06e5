"""In-memory batching: seeded per-epoch shuffles, full coverage, DDP sharding."""

from __future__ import annotations

import torch

from mnist_pipeline.data.datamodule import TensorBatches
from mnist_pipeline.data.dataset import Split


def _split(n: int) -> Split:
    return Split(
        images=torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 28, 28),
        labels=torch.arange(n),
    )


def _epoch(batches: TensorBatches, epoch: int) -> list[int]:
    batches.sampler.set_epoch(epoch)
    return [i for _, y in batches for i in y.tolist()]


def test_batches_cover_the_split_and_slice_images_with_labels() -> None:
    b = TensorBatches(_split(103), batch_size=10, shuffle=True, seed=1)
    assert len(b) == 11
    seen = []
    for x, y in b:
        assert x.shape[1:] == (1, 28, 28)
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # images stay paired with their labels
        seen += y.tolist()
    assert sorted(seen) == list(range(103))


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    a = TensorBatches(_split(50), 8, shuffle=True, seed=1)
    b = TensorBatches(_split(50), 8, shuffle=True, seed=1)
    assert _epoch(a, 3) == _epoch(b, 3)  # a resumed run sees the same epoch 3
    assert _epoch(a, 3) != _epoch(a, 4)
    assert _epoch(a, 3) != _epoch(TensorBatches(_split(50), 8, shuffle=True, seed=2), 3)


def test_drop_last_and_no_shuffle() -> None:
    b = TensorBatches(_split(25), 10, shuffle=False, drop_last=True)
    assert len(b) == 2 and _epoch(b, 0) == list(range(20))


def test_ddp_ranks_get_disjoint_equal_shards() -> None:
    ranks = [
        TensorBatches(_split(101), 10, shuffle=True, seed=0, rank=r, world_size=2) for r in (0, 1)
    ]
    shards = [_epoch(r, 2) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 50
    assert set(shards[0]).isdisjoint(shards[1])
