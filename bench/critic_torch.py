#!/usr/bin/env python3
"""critic_torch.py - the WGAN-GP critic step of bench_critic.c (lss_convnet + lss_wgan_gp_step of lss_nn.h) in
PyTorch on the CPU, as the reference.

The critic of `cgan --scale small` (Perraudin et al. 2021, Table A1 at 32 x 32): convolutions 1 -> 16 (7 x 7),
16 -> 32 (5 x 5, stride 2), 32 -> 64 (5 x 5, stride 2), 64 -> 128 (3 x 3, stride 2), LeakyReLU 0.2 after each,
flatten, the 2 parameters concatenated, dense 256, 128, 64 with LeakyReLU 0.2, one output. One critic step:
L = mean D(fake) - mean D(real) + 10 mean (|grad_x D(xh)| - 1)^2 with xh = eps real + (1 - eps) fake, its gradient
(the penalty's through a second-order backward pass, create_graph=True), and an RMSProp update. Prints "torch
threads T forward+backward S seconds (cpu C s)" (best of the timed steps after a warm-up) and "torch memory:
before steps B MB, peak P MB, steps +D MB".

Usage: python3 bench/critic_torch.py threads [batch]
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_bench import time_steps


class Critic(nn.Module):
    def __init__(self, w0=16, wd=256):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1, w0, 7, 1, 3), nn.Conv2d(w0, 2 * w0, 5, 2, 2),
                                    nn.Conv2d(2 * w0, 4 * w0, 5, 2, 2), nn.Conv2d(4 * w0, 8 * w0, 3, 2, 1)])
        self.dense = nn.ModuleList([nn.Linear(8 * w0 * 16 + 2, wd), nn.Linear(wd, wd // 2), nn.Linear(wd // 2, wd // 4)])
        self.out = nn.Linear(wd // 4, 1)

    def forward(self, x, y):
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.2)
        x = torch.cat([torch.flatten(x, 1), y], 1)
        for d in self.dense:
            x = F.leaky_relu(d(x), 0.2)
        return self.out(x)


def main():
    t = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    b = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    torch.manual_seed(0)
    net = Critic()
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    real = torch.rand(b, 1, 32, 32) + 1.0
    fake = torch.rand(b, 1, 32, 32) + 1.0
    y = torch.rand(b, 2)
    eps = torch.rand(b, 1, 1, 1)
    print(f"torch {torch.__version__}, parameters {sum(p.numel() for p in net.parameters())}")

    def step():
        opt.zero_grad(set_to_none=False)
        xh = (eps * real + (1 - eps) * fake).requires_grad_(True)
        g, = torch.autograd.grad(net(xh, y).sum(), xh, create_graph=True)
        gp = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
        (net(fake, y).mean() - net(real, y).mean() + 10 * gp).backward()
        opt.step()

    time_steps(step, t, 6)


if __name__ == "__main__":
    main()
