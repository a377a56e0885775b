#!/usr/bin/env python3
"""PyTorch-eager reference of configs/bench-small.yaml's model, written the way Hugging Face's
Mixtral sparse MoE block is (a loop over experts with index_add_), trained with torch.optim.AdamW.

It is the baseline hetmoe's CPU training speed is compared with (benchmarks/cpu_compare.sh).
Prints one JSON object: tokens/s over the timed steps and the process's peak resident memory.

Usage: eager_moe.py --data data/fortunes [--steps 40] [--warmup-steps 5] [--threads 2]
"""
import argparse
import json
import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# configs/bench-small.yaml
VOCAB, D, LAYERS, HEADS, EXPERTS, TOP_K, FFN, SHARED = 257, 256, 4, 4, 8, 2, 512, 1
SEQ, BATCH, LR, AUX = 256, 8, 1e-3, 0.01


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Expert(nn.Module):  # Mixtral's MixtralBlockSparseTop2MLP: w1 (gate), w3 (up), w2 (down)
    def __init__(self, d, f):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoeBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(D, EXPERTS, bias=False)
        self.experts = nn.ModuleList([Expert(D, FFN) for _ in range(EXPERTS)])
        self.shared = Expert(D, FFN * SHARED)

    def forward(self, x):
        b, t, d = x.shape
        h = x.view(-1, d)
        logits = self.gate(h)
        probs = F.softmax(logits, dim=1, dtype=torch.float)
        weights, selected = torch.topk(probs, TOP_K, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(h.dtype)
        out = torch.zeros_like(h)
        mask = F.one_hot(selected, num_classes=EXPERTS).permute(2, 1, 0)
        for e in range(EXPERTS):
            slot, tok = torch.where(mask[e])
            if tok.numel() == 0:
                continue
            y = self.experts[e](h[tok]) * weights[tok, slot, None]
            out.index_add_(0, tok, y.to(h.dtype))
        frac = F.one_hot(selected, EXPERTS).float().sum((0, 1)) / (h.shape[0] * TOP_K)
        aux = EXPERTS * (frac * probs.mean(0)).sum()
        return (out + self.shared(h)).view(b, t, d), aux


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.moe = SparseMoeBlock()

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        hd = d // HEADS
        h = self.n1(x)
        q, k, v = (m(h).view(b, t, HEADS, hd).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        y, aux = self.moe(self.n2(x))
        return x + y, aux


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.norm = RMSNorm(D)
        self.head = nn.Linear(D, VOCAB, bias=False)
        hd = D // HEADS
        inv = 10000.0 ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        ang = torch.outer(torch.arange(SEQ, dtype=torch.float64), inv)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        aux = 0.0
        for blk in self.blocks:
            x, a = blk(x, self.cos, self.sin)
            aux = aux + a
        return self.head(self.norm(x)), aux / LAYERS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/fortunes")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    raw = open(os.path.join(args.data, "tokens.bin"), "rb").read()
    tokens = torch.frombuffer(bytearray(raw), dtype=torch.int16).long()
    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    losses, start = [], None
    for step in range(args.warmup_steps + args.steps):
        if step == args.warmup_steps:
            start = time.perf_counter()
        idx = torch.randint(0, tokens.numel() - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([tokens[i:i + SEQ + 1] for i in idx.tolist()])
        logits, aux = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)) + AUX * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    print(json.dumps({
        "impl": "pytorch-eager (HF Mixtral-style expert loop)",
        "torch": torch.__version__,
        "threads": args.threads,
        "steps": args.steps,
        "tokens_per_s": args.steps * BATCH * SEQ / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": losses[-1],
        "loss_is_finite": all(math.isfinite(x) for x in losses),
    }))


if __name__ == "__main__":
    main()
