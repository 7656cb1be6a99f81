"""Multi-process training of a small BitNet-style language model with anacuda's TernaryLinear
(ternary weights trained with ANA, 8-bit per-token activations) on PyTorch's own engines:

    torchrun --standalone --nproc-per-node 2 examples/distributed.py

trains it with FSDP2, then with tensor parallelism (``--parallel fsdp`` or ``tp``: one of them).
FSDP2 (``fully_shard``) shards the parameters across the ranks, each training on its share of
the batch; tensor parallelism splits every Linear of the blocks across the ranks (attention and
MLP: the first layers column-wise, the second row-wise), all ranks on the same batch. Either
way the anacuda layers compute what one process would: their scales (absmean of the weights,
absmax per token of the activations) are reduced across the shards, so both runs print the same
losses. A NoiseController anneals σ, ``--checkpoint DIR`` saves a sharded checkpoint with
torch.distributed.checkpoint (it loads on any number of ranks), and ``anacuda.freeze`` gathers
the deployed model on every rank.

NCCL when there is a GPU per rank, else gloo on the CPU. Random tokens stand in for data.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

if not __package__:  # run as a script from a checkout: anacuda is the checkout's
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import anacuda  # noqa: E402
from anacuda.nn import ANALinear, TernaryLinear  # noqa: E402


class Block(nn.Module):
    """A transformer block: causal self-attention and an MLP, residual, no norms (TernaryLinear
    may carry its own, BitNet's SubLN). Under tensor parallelism each rank holds a share of the
    heads and of the hidden units: the views below count heads with -1."""

    def __init__(self, linear, d: int = 16, heads: int = 4, act=nn.ReLU):
        super().__init__()
        self.head_dim = d // heads
        self.q, self.k, self.v, self.o = (linear(d, d) for _ in range(4))
        self.up, self.act, self.down = linear(d, 2 * d), act(), linear(2 * d, d)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (m(x).view(B, T, -1, self.head_dim).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
        return x + self.down(self.act(self.up(x)))


class TinyLM(nn.Module):
    """Token embeddings, `layers` blocks of `linear` layers and `act`, and the output head."""

    def __init__(self, linear, head=nn.Linear, vocab: int = 16, d: int = 16, layers: int = 2, act=nn.ReLU):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(linear, d, act=act) for _ in range(layers))
        self.head = head(d, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def ternary(i: int, o: int) -> TernaryLinear:
    return TernaryLinear(i, o, noise="uniform", strategy="expectation", sigma=0.3)


def int8_head(i: int, o: int) -> ANALinear:
    """The head with 8-bit weights (one scale per output), which freeze stores as int8 codes."""
    return ANALinear(i, o, quantizer=anacuda.Quantizer.uniform(8), eps="max_abs_per_channel")


def tp_plan() -> dict:
    """Column-wise then row-wise, per block. anacuda.distributed's styles: torch's shard every
    parameter they find, the quantisers' and the norm's too."""
    from anacuda.distributed import ColwiseParallel, RowwiseParallel

    plan = {}
    for i in range(2):
        plan.update({f"blocks.{i}.{n}": ColwiseParallel() for n in ("q", "k", "v", "up")})
        plan.update({f"blocks.{i}.{n}": RowwiseParallel() for n in ("o", "down")})
    return plan


def train(parallel: str, steps: int, mesh, checkpoint=None) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    rank, world, device = dist.get_rank(), dist.get_world_size(), mesh.device_type
    torch.manual_seed(0)  # every rank builds the same model
    model = TinyLM(ternary, int8_head).to(device)
    controller = anacuda.NoiseController(model, steps)
    if parallel == "fsdp":
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        parallelize_module(model, mesh, tp_plan())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(1)  # the same batches on every rank
    for step in range(steps):
        tokens = torch.randint(16, (4 * world, 9), generator=g)
        if parallel == "fsdp":  # data parallel: each rank its share of the batch
            tokens = tokens.chunk(world)[rank]
        tokens = tokens.to(device)
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        controller.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(f"{parallel} step {step}: loss {mean.item() / world:.4f}", flush=True)

    if checkpoint:  # sharded: each rank writes its shard; loads on any number of ranks
        dcp.save({"model": get_model_state_dict(model), "controller": controller.state_dict()},
                 checkpoint_id=os.path.join(checkpoint, parallel))
    frozen = anacuda.freeze(model)  # on every rank: gathers the whole model
    if rank == 0:
        tokens = torch.randint(16, (2, 8), generator=g).to(device)
        print(f"{parallel} frozen head: {type(frozen.head).__name__}, logits {tuple(frozen(tokens).shape)}", flush=True)


def main(argv=None) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parallel", choices=("fsdp", "tp"), default=None, help="one of them (default: both)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--checkpoint", default=None, help="a folder for the sharded checkpoints (default: none saved)")
    args = p.parse_args(argv)

    # NCCL with one GPU per rank; gloo and the CPU otherwise.
    cuda = anacuda.cuda_available() and torch.cuda.device_count() >= int(os.environ["LOCAL_WORLD_SIZE"])
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    mesh = init_device_mesh("cuda" if cuda else "cpu", (dist.get_world_size(),))
    for parallel in [args.parallel] if args.parallel else ["fsdp", "tp"]:
        train(parallel, args.steps, mesh, args.checkpoint)
    dist.barrier()  # no rank tears the process group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
