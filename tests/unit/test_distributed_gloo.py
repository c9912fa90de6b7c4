"""DDP behaviour of the parts that live outside nnU-Net's DDP-wrapped network, on CPU with gloo.

nnU-Net's multi-GPU path itself needs CUDA/NCCL (not testable here); what is tested is that heads
start identical on every rank, that their gradients are averaged whatever way they were used,
and that queues (and anything gathered) stay identical across ranks.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    from nnunet_semicl.modules.distributed import average_gradients, broadcast_module, concat_all_gather
    from nnunet_semicl.modules.queues import RingBuffer

    torch.manual_seed(100 + rank)  # heads are created per rank with different random weights
    heads = torch.nn.ModuleDict({"used": torch.nn.Linear(3, 2), "unused_here": torch.nn.Linear(3, 2)})
    broadcast_module(heads)
    init = {k: v.clone() for k, v in heads.state_dict().items()}

    x = torch.full((4, 3), float(rank + 1))
    loss = heads["used"](x).sum()
    if rank == 1:  # this head is used on rank 1 only (a phase-dependent head, say)
        loss = loss + 2 * heads["unused_here"](x).sum()
    loss.backward()
    average_gradients(heads.parameters())
    grads = {n: p.grad.clone() for n, p in heads.named_parameters()}

    q = RingBuffer(5, (2,), with_labels=True)
    q.push(torch.full((rank + 2, 2), float(rank)), torch.full((rank + 2,), rank), gather=True)
    gathered = concat_all_gather(torch.arange(rank + 1).float())
    torch.save({"init": init, "grads": grads, "queue": q.state_dict(), "gathered": gathered},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_heads_queues_and_gather_across_two_cpu_ranks(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(WORLD)]
    for k in r[0]["init"]:
        assert torch.equal(r[0]["init"][k], r[1]["init"][k])  # identical start
    for k in r[0]["grads"]:
        assert torch.equal(r[0]["grads"][k], r[1]["grads"][k])  # identical averaged gradients
    # d(sum W x + b)/dW = sum over rows of x: rank0 x=1, rank1 x=2, 4 rows each -> mean (4 + 8) / 2 = 6
    assert torch.allclose(r[0]["grads"]["used.weight"], torch.full((2, 3), 6.0))
    assert torch.allclose(r[0]["grads"]["used.bias"], torch.full((2,), 4.0))
    # used on rank 1 only (gradient 2 * 8 = 16 there, zeros on rank 0) -> 8 everywhere
    assert torch.allclose(r[0]["grads"]["unused_here.weight"], torch.full((2, 3), 8.0))
    for k in r[0]["queue"]:
        assert torch.equal(r[0]["queue"][k], r[1]["queue"][k])  # identical queues
    assert int(r[0]["queue"]["count"]) == 5  # 2 + 3 items gathered
    assert r[0]["queue"]["labels"].tolist() == [0, 0, 1, 1, 1]
    assert r[0]["gathered"].tolist() == [0.0, 0.0, 1.0]  # ranks contribute 1 and 2 rows
