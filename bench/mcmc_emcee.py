#!/usr/bin/env python3
"""Reference side of bench/bench_mcmc.c: emcee's ensemble sampler on the same MDN log-likelihood,
written in numpy, from the weights the C bench exported as NPY.

Usage: mcmc_emcee.py DIR NSTEPS
DIR holds w0.npy.. / b0.npy.. (float32 dense layers, ReLU between), tscale.npy (robust scaler of
theta: row 0 centre, row 1 scale), obs.npy (the scaled observation), prior.npy (row 0 low, row 1
high), start.npy (initial walkers), meta.npy (K, d, number of layers), xtest.npy (points at which the
C side evaluated the log-likelihood). Prints "maxdiff <max |log L_numpy - log L_C|>" and
"steps_per_s <rate>".
"""
import os
import sys
import time

import numpy as np
import emcee


def load(d, name):
    return np.load(os.path.join(d, name))


def main():
    d = sys.argv[1]
    nsteps = int(sys.argv[2])
    K, D, L = (int(v) for v in load(d, "meta.npy"))
    ws = [load(d, "w%d.npy" % i) for i in range(L)]
    bs = [load(d, "b%d.npy" % i) for i in range(L)]
    tscale = load(d, "tscale.npy")
    obs = load(d, "obs.npy")
    prior = load(d, "prior.npy")
    start = load(d, "start.npy")
    T = D * (D + 1) // 2
    rows, cols = np.tril_indices(D)
    diag = rows == cols
    c0 = 0.5 * D * np.log(2 * np.pi)

    def loglike(theta):
        x = ((theta - tscale[0]) / tscale[1]).astype(np.float32)
        for i in range(L):
            x = x @ ws[i] + bs[i]
            if i < L - 1:
                x = np.maximum(x, 0)
        out = x.astype(np.float64)
        n = out.shape[0]
        logits = out[:, :K]
        mu = out[:, K:K + K * D].reshape(n, K, D)
        tri = out[:, K + K * D:].reshape(n, K, T).copy()
        tri[:, :, diag] = np.logaddexp(0.0, tri[:, :, diag]) + 1e-4
        Lm = np.zeros((n, K, D, D))
        Lm[:, :, rows, cols] = tri
        r = obs[None, None, :] - mu
        z = np.einsum("nkij,nki->nkj", Lm, r)
        logdet = np.log(tri[:, :, diag]).sum(axis=2)
        lw = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        a = lw + logdet - 0.5 * (z * z).sum(axis=2) - c0
        return np.logaddexp.reduce(a, axis=1)

    def logprob(theta):
        theta = np.atleast_2d(theta)
        inside = np.all((theta >= prior[0]) & (theta <= prior[1]), axis=1)
        lp = np.full(theta.shape[0], -np.inf)
        if inside.any():
            lp[inside] = loglike(theta[inside])
        return lp

    xtest = load(d, "xtest.npy")
    ctest = load(d, "ctest.npy")
    print("maxdiff %.6g" % np.max(np.abs(loglike(xtest) - ctest)))
    sampler = emcee.EnsembleSampler(start.shape[0], start.shape[1], logprob, vectorize=True)
    sampler.run_mcmc(start, 20, progress=False)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    sampler.run_mcmc(None, nsteps, progress=False)
    dt = time.perf_counter() - t0
    print("acceptance %.4f" % np.mean(sampler.acceptance_fraction))
    print("steps_per_s %.6g" % (nsteps / dt))


if __name__ == "__main__":
    main()
