#!/usr/bin/env python3
"""Reference side of bench/bench_stats.c: the same per-map statistics of a 128 x 128 map in numpy and
scikit-image (vectorised numpy in LensTools' conventions; skimage.metrics.structural_similarity).

Usage: stats_reference.py DIR REPEATS
DIR holds a.npy and b.npy (float32 maps). Prints "<statistic> <ms per call>" lines and "total <ms>".
"""
import os
import sys
import time

import numpy as np
from skimage.metrics import structural_similarity


def main():
    d, reps = sys.argv[1], int(sys.argv[2])
    m = np.load(os.path.join(d, "a.npy")).astype(np.float64)
    m2 = np.load(os.path.join(d, "b.npy")).astype(np.float64)
    n = m.shape[0]
    pix_deg = 1.0 / 60.0
    lpix = 360.0 / (n * pix_deg)
    edges = 200.0 * (10000.0 / 200.0) ** (np.arange(9) / 8.0)
    thr = -2.0 + 0.5 * np.arange(13)
    kx = np.fft.fftfreq(n) * n
    ky = np.arange(n // 2 + 1)

    def ps():
        ft = np.fft.rfft2(m)
        lx = np.minimum(np.arange(n), n - np.arange(n))[:, None] * lpix
        ell = np.sqrt(lx ** 2 + (ky[None, :] * lpix) ** 2)
        b = np.searchsorted(edges, ell, side="left") - 1
        ok = (b >= 0) & (b < 8) & (ell > edges[0])
        p = np.bincount(b[ok], (np.abs(ft) ** 2)[ok], minlength=8)
        h = np.bincount(b[ok], minlength=8)
        return p / np.maximum(h, 1)

    def bisp(folded):
        ft = np.fft.rfft2(m)
        k1x = np.where(np.arange(n) < n // 2, np.arange(n), np.arange(n) - n)[:, None] * np.ones((1, n // 2 + 1), int)
        k1y = np.ones((n, 1), int) * ky[None, :]
        ell = np.sqrt(k1x ** 2 + k1y ** 2) * lpix
        if folded:
            k2x, k2y, keep = -np.trunc(0.5 * k1x).astype(int), -np.trunc(0.5 * k1y).astype(int), np.ones_like(ell, bool)
        else:
            keep = ~((k1x < 0) & (k1y < k1x * -1.7320508075688772))
            k2x = np.trunc(-0.5 * k1x - 0.8660254037844386 * k1y).astype(int)
            k2y = np.trunc(0.8660254037844386 * k1x - 0.5 * k1y).astype(int)
        k3x, k3y = -k1x - k2x, -k1y - k2y

        def leg(x, y):
            c = y < 0
            x = np.where(c, -x, x)
            y = np.where(c, -y, y)
            ok = (y < n // 2 + 1) & (x > -(n // 2 + 1)) & (x < n // 2 + 1)
            v = ft[np.where(ok, x % n, 0), np.where(ok, y, 0)]
            return np.where(c, np.conj(v), v), ok
        f2, o2 = leg(k2x, k2y)
        f3, o3 = leg(k3x, k3y)
        b = np.searchsorted(edges, ell, side="left") - 1
        ok = keep & o2 & o3 & (ell < edges[-1]) & (b >= 0) & (ell > edges[0])
        v = np.real(ft * f2 * f3)
        return np.bincount(b[ok], v[ok], minlength=8) / np.maximum(np.bincount(b[ok], minlength=8), 1)

    def hist():
        return np.histogram(m, bins=thr * m.std())[0]

    def peaks(window):
        r = window // 2
        ismax = np.ones(m.shape, bool)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dy or dx:
                    ismax &= m > np.roll(np.roll(m, dy, 0), dx, 1)
        s = m.std()
        return np.histogram(m[ismax], bins=thr * s)[0] / np.diff(thr)

    def mink():
        s = m.std()
        gx = (np.roll(m, -1, 1) - np.roll(m, 1, 1)) / 2
        gy = (np.roll(m, -1, 0) - np.roll(m, 1, 0)) / 2
        hxx = (np.roll(m, -2, 1) + np.roll(m, 2, 1) - 2 * m) / 4
        hyy = (np.roll(m, -2, 0) + np.roll(m, 2, 0) - 2 * m) / 4
        hxy = (np.roll(np.roll(m, -1, 0), -1, 1) + np.roll(np.roll(m, 1, 0), 1, 1)
               - np.roll(np.roll(m, -1, 0), 1, 1) - np.roll(np.roll(m, 1, 0), -1, 1)) / 4
        g2 = gx ** 2 + gy ** 2
        i1 = 0.25 * np.sqrt(g2)
        i2 = (2 * gx * gy * hxy - gx ** 2 * hyy - gy ** 2 * hxx) / np.where(g2 > 0, g2, 1) / (2 * np.pi)
        mids = 0.5 * (thr[1:] + thr[:-1]) * s
        v0 = (m.ravel()[None, :] >= mids[:, None]).mean(axis=1)
        b = np.searchsorted(thr * s, m.ravel(), side="right") - 1
        ok = (b >= 0) & (b < 12)
        w = np.diff(thr) * m.size
        v1 = np.bincount(b[ok], i1.ravel()[ok], minlength=12) / w
        v2 = np.bincount(b[ok], i2.ravel()[ok], minlength=12) / w
        return v0, v1, v2

    def ssim():
        return structural_similarity(m, m2, data_range=max(m.max(), m2.max()) - min(m.min(), m2.min()))

    tests = [("power_spectrum", ps), ("bispectrum_equilateral", lambda: bisp(False)),
             ("bispectrum_folded", lambda: bisp(True)), ("histogram", hist), ("peaks_8", lambda: peaks(3)),
             ("peaks_5x5", lambda: peaks(5)), ("minkowski", mink), ("ssim_pair", ssim)]
    total = 0.0
    for name, fn in tests:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        ms = (time.perf_counter() - t0) / reps * 1e3
        total += ms
        print("%s %.4f" % (name, ms))
    print("total %.4f" % total)


if __name__ == "__main__":
    main()
