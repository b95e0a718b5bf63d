"""The teacher's logits from its head sharded by vocabulary rows (``--shard_teacher``; docs/METHOD.md section 9).

The KL needs, for every token of this rank, the teacher's logits over the whole vocabulary, ``h_T U_T^T``. Under
``--shard_teacher`` rank r of N holds rows [o_r, o_r + V_r) of the (V, d) head U_T (FSDP's dim-0 shard). Gathering
the head for the loss would put a whole (V, d) matrix on every rank at the step's memory peak (the student's
activations are all alive then). Instead each chunk of c tokens is exchanged (the vocabulary-parallel logits of
Megatron-LM's tensor parallelism, here across data-parallel ranks that each bring their own tokens):

1. all-gather every rank's (c, d) chunk of teacher hidden states: (N c, d), the same on every rank;
2. multiply by this rank's rows: (N c, V_r), every rank's tokens over this rank's slice of the vocabulary;
3. all-to-all: rank r sends rank j the rows of j's tokens, and receives from every rank j its own tokens'
   logits over j's slice; placed side by side they are the (c, V) logits of its tokens.

Memory: two buffers of at most ``EXCHANGE_BYTES`` (a chunk is exchanged in blocks of rows) instead of the (V, d)
head. Traffic per rank and chunk: (N - 1) / N of c V values received (and c d for the hidden states), against
(N - 1) / N of V d for a gather of the head: the exchange moves more bytes when a micro-batch has more tokens than
the teacher has hidden units, and it is not prefetched; docs/DESIGN.md "Sharded teacher" weighs the two.

Written by hand: torch's DTensor expresses the same product (a replicated (N c, d) times a row-sharded head,
redistributed from vocabulary shards to token shards), but on CPU process groups it falls back to an all-gather of
the whole (N c, V) logits (N times the memory), and ranks whose micro-batches differ in length must still meet at
every exchange (``rows_everywhere``), which a DTensor of uneven shards does not schedule. The two collectives are
torch.distributed's own; the teacher's weights are never gathered here.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

EXCHANGE_BYTES = 16 * 2**20
"""Largest (rows, V) block of logits one exchange moves (and each of its two buffers holds): 16 MiB, 85 tokens at
V = 49,152 in fp32, 65 at V = 128,256 in bf16; big enough that a collective's latency is small against its bytes."""

# torch 2.13 renamed all_gather_into_tensor (kept, deprecated); requirements allow earlier versions
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def shard_rows(n: int, rank: int, size: int) -> int:
    """Rows of an ``n``-row tensor that FSDP's dim-0 shard gives ``rank`` of ``size`` (``torch.chunk`` sizes)."""
    per = math.ceil(n / size)
    return max(0, min(per, n - rank * per))


class ShardedHeadLogits:
    """The teacher's (V, d) head, of which this rank holds rows [rank * ceil(V / N), ...), as a source of logits.

    ``rows_everywhere`` and ``logits_into`` are collectives: every rank calls them the same number of times, with
    the same ``chunk``."""

    def __init__(self, local: Tensor, vocab: int, group, rank: int, size: int, exchange_bytes: int = EXCHANGE_BYTES):
        """``local``: (V_r, d) this rank's rows of the head (``torch.chunk`` sizes: FSDP's dim-0 shard); ``vocab``:
        V; ``group``: the process group the head is sharded over, ``rank`` / ``size`` in it; ``exchange_bytes``: the
        largest block of logits one exchange moves (the same on every rank)."""
        self.rows = [shard_rows(vocab, j, size) for j in range(size)]
        """V_j: the vocabulary rows each rank holds."""
        if local.shape[0] != self.rows[rank]:
            raise RuntimeError(f"the head's shard has {local.shape[0]} rows, expected {self.rows[rank]}")
        self.local, self.vocab, self.group, self.rank, self.size = local, vocab, group, rank, size
        self.exchange_bytes = exchange_bytes
        self.offsets = [j * math.ceil(vocab / size) for j in range(size)]
        self._block = 0

    def rows_everywhere(self, n: int) -> int:
        """The most token rows any rank brings to this loss (``n``: this rank's): every rank runs that many rows'
        worth of exchanges, a rank with fewer taking part with empty chunks."""
        if self.size == 1:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=self.local.device)  # NCCL reduces device tensors only
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t.item())

    def logits_into(self, out: Tensor | None, h: Tensor, chunk: int) -> None:
        """out[:c] <- h @ U_T^T for this rank's (c, d) hidden states ``h``, c <= ``chunk`` (c = 0, ``out`` None: this
        rank has no tokens left and takes part for the others).

        The chunk is exchanged in blocks of rows whose (rows, V) buffer stays under ``exchange_bytes``, so the
        exchange holds two such buffers, not two of the loss's (chunk, V).

        Args:
            out: (>= c, V) float32, written in its first c rows.
            h: (c, d) in any dtype (cast to the head's, as the unsharded ``h @ U^T`` would compute in it).
            chunk: the rows of every rank's chunk in this exchange (the same on every rank).
        """
        local, size, rows_r = self.local, self.size, self.rows[self.rank]
        d, dt, dev = local.shape[1], local.dtype, local.device
        c = h.shape[0]
        if size == 1:  # the whole head is here: nothing to exchange (and no CPU collective, whose worker thread
            if c:      # would start a second OpenMP team competing with this one: +40 % per step at 2 threads)
                if out.dtype == dt:
                    torch.mm(h.to(dt), local.t(), out=out[:c])
                else:
                    out[:c].copy_(h.to(dt) @ local.t())
            return
        block = max(1, min(chunk, self.exchange_bytes // (self.vocab * local.element_size())))  # the same on every rank
        if block != self._block:  # buffers for this block, reused by every exchange that follows
            self._h = torch.empty(block, d, dtype=dt, device=dev)
            self._h_all = torch.empty(size * block, d, dtype=dt, device=dev)
            self._z = torch.empty(size * block * rows_r, dtype=dt, device=dev)
            self._recv = torch.empty(block * self.vocab, dtype=dt, device=dev)
            self._block = block
        for a in range(0, chunk, block):
            k = min(block, chunk - a)  # every rank's rows in this exchange
            mine = max(0, min(k, c - a))  # this rank's real ones among them (the rest are zeros)
            hb, h_all = self._h[:k], self._h_all[:size * k]
            hb[:mine].copy_(h[a:a + mine])
            hb[mine:].zero_()
            _all_gather_single(h_all, hb, group=self.group)
            z = self._z[:size * k * rows_r].view(size * k, rows_r)
            torch.mm(h_all, local.t(), out=z)  # (N k, V_r): rank j's tokens are rows [j k, (j + 1) k)
            recv = self._recv[:k * self.vocab]
            dist.all_to_all_single(recv, z.view(-1), output_split_sizes=[k * v for v in self.rows],
                                   input_split_sizes=[k * rows_r] * size, group=self.group)
            if mine:
                for j, part in enumerate(recv.split([k * v for v in self.rows])):
                    o, v = self.offsets[j], self.rows[j]
                    out[a:a + mine, o:o + v].copy_(part.view(k, v)[:mine])

    def release(self) -> None:
        """Free the exchange buffers."""
        self._block = 0
        self._h = self._h_all = self._z = self._recv = None
