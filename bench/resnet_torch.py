#!/usr/bin/env python3
"""resnet_torch.py - the DeepLSS ResNet of bench_resnet.c in PyTorch on the CPU, as the reference.

Same network: 4 convolutions (5x5, stride 2, padding 2, ReLU) from 8 to 128 channels, 10 residual
blocks of two 5x5 convolutions at 128 channels (no normalisation), flatten, one dense layer with
n + n(n+1)/2 = 35 outputs (n = 7); input a batch of 32 maps of 8 x 64 x 64; loss the Gaussian NLL
with a Cholesky-parametrised precision (softplus diagonal + 1e-4), as lss_op_gauss_nll.
Prints one line per thread count: "torch threads T forward+backward S seconds (cpu C s)" (best
wall-clock and process CPU time of the timed steps after one warm-up step), then "torch memory: before
steps B MB, peak P MB, steps +D MB": the resident set before the first step (interpreter, library, net,
data) and its high-water mark over all steps (getrusage), and their difference, what the steps need.

Usage: python3 bench/resnet_torch.py [threads ...]   (default: 1 2)
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_bench import time_steps

N_PARAM = 7
N_OUT = N_PARAM + N_PARAM * (N_PARAM + 1) // 2


class ResBlock(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, k, 1, k // 2)
        self.c2 = nn.Conv2d(c, c, k, 1, k // 2)

    def forward(self, x):
        h = F.relu(self.c1(x))
        return F.relu(self.c2(h) + x)


class DeepLSSResNet(nn.Module):
    def __init__(self, cin=8, size=64, ch=128, k=5, nconv=4, nres=10, nout=N_OUT):
        super().__init__()
        convs, c = [], cin
        for _ in range(nconv):
            convs.append(nn.Conv2d(c, ch, k, 2, k // 2))
            c = ch
            size = (size + 2 * (k // 2) - k) // 2 + 1
        self.convs = nn.ModuleList(convs)
        self.res = nn.ModuleList([ResBlock(ch, k) for _ in range(nres)])
        self.dense = nn.Linear(ch * size * size, nout)

    def forward(self, x):
        for c in self.convs:
            x = F.relu(c(x))
        for r in self.res:
            x = r(x)
        return self.dense(torch.flatten(x, 1))


def gauss_nll(out, y, d=N_PARAM):
    mu = out[:, :d]
    tri = out[:, d:]
    n = out.shape[0]
    L = torch.zeros(n, d, d, dtype=out.dtype)
    idx = torch.tril_indices(d, d)
    L[:, idx[0], idx[1]] = tri
    diag = F.softplus(torch.diagonal(L, dim1=1, dim2=2)) + 1e-4
    L = torch.tril(L, -1) + torch.diag_embed(diag)
    r = (y - mu).unsqueeze(2)
    z = torch.matmul(L.transpose(1, 2), r).squeeze(2)
    return (z.pow(2).sum(1) - 2 * torch.log(diag).sum(1)).mean()


def main():
    threads = [int(a) for a in sys.argv[1:]] or [1, 2]
    torch.manual_seed(0)
    net = DeepLSSResNet()
    x = torch.randn(32, 8, 64, 64)
    y = torch.randn(32, N_PARAM)
    nparam = sum(p.numel() for p in net.parameters())
    print(f"torch {torch.__version__}, parameters {nparam}")

    def step():
        net.zero_grad(set_to_none=False)
        gauss_nll(net(x), y).backward()

    for t in threads:
        time_steps(step, t, 4)


if __name__ == "__main__":
    main()
