#!/usr/bin/env python3
"""unet_torch.py - the mass-mapping U-net of bench_unet.c (lss_unet in lss_nn.h) in PyTorch on the CPU, as the
reference.

Same network: a constant map of the noise level concatenated to the input (2 + 1 channels); stem 3x3 convolution
to c0 channels, batch norm, ReLU; residual blocks (3x3 conv, [2x2 average pool], BN, ReLU, 3x3 conv, BN, plus the
input or its 1x1 projection (after the same pooling) with BN, ReLU): enc0 c0 -> c0, enc1 c0 -> 2 c0 (down),
enc2 2 c0 -> 4 c0 (down), the noise map concatenated again, mid 4 c0 + 1 -> 4 c0; transposed 2x2 stride-2
convolution up, concatenation with the skip, dec1 4 c0 -> 2 c0; up again, dec0 2 c0 -> c0; 3x3 head to 1 channel,
divided by |sigma| + 1e-3. Convolutions followed by batch norm have no bias. Loss: mean squared error against a
fixed target (the step's cost is the network's). Prints "torch threads T forward+backward S seconds (cpu C s)"
(best of the timed steps after a warm-up step) and "torch memory: before steps B MB, peak P MB, steps +D MB".

Usage: python3 bench/unet_torch.py threads [c0] [side] [batch]
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_bench import time_steps


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)
            self.bp = nn.BatchNorm2d(cout)

    def forward(self, x):
        h = self.c1(x)
        if self.stride == 2:
            h = F.avg_pool2d(h, 2, 2)
        h = F.relu(self.b1(h))
        h = self.b2(self.c2(h))
        if self.proj is not None:
            s = F.avg_pool2d(x, 2, 2) if self.stride == 2 else x
            s = self.bp(self.proj(s))
        else:
            s = x
        return F.relu(h + s)


class UNet(nn.Module):
    def __init__(self, cin=2, cout=1, c0=32):
        super().__init__()
        c1, c2 = 2 * c0, 4 * c0
        self.stem = nn.Conv2d(cin + 1, c0, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c0)
        self.enc0 = ResBlock(c0, c0, 1)
        self.enc1 = ResBlock(c0, c1, 2)
        self.enc2 = ResBlock(c1, c2, 2)
        self.mid = ResBlock(c2 + 1, c2, 1)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, 2)
        self.dec1 = ResBlock(2 * c1, c1, 1)
        self.up2 = nn.ConvTranspose2d(c1, c0, 2, 2)
        self.dec0 = ResBlock(2 * c0, c0, 1)
        self.head = nn.Conv2d(c0, cout, 3, 1, 1)

    def forward(self, x, sigma):
        n, _, h, w = x.shape
        sm = sigma.view(n, 1, 1, 1)
        x = torch.cat([x, sm.expand(n, 1, h, w)], 1)
        h0 = F.relu(self.stem_bn(self.stem(x)))
        s0 = self.enc0(h0)
        s1 = self.enc1(s0)
        y = self.enc2(s1)
        y = torch.cat([y, sm.expand(n, 1, y.shape[2], y.shape[3])], 1)
        y = self.mid(y)
        y = self.dec1(torch.cat([self.up1(y), s1], 1))
        y = self.dec0(torch.cat([self.up2(y), s0], 1))
        return self.head(y) / (sigma.abs().view(n, 1, 1, 1) + 1e-3)


def main():
    t = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    c0 = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    side = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    torch.manual_seed(0)
    net = UNet(c0=c0)
    net.train()
    x = torch.randn(batch, 2, side, side)
    sigma = torch.rand(batch) + 0.1
    y = torch.randn(batch, 1, side, side)
    print(f"torch {torch.__version__}, parameters {sum(p.numel() for p in net.parameters())}")

    def step():
        net.zero_grad(set_to_none=False)
        F.mse_loss(net(x, sigma), y).backward()

    time_steps(step, t, 5)


if __name__ == "__main__":
    main()
