#!/bin/sh
# The emulator part of `make demo`: the conditional WGAN-GP of convergence maps trained briefly on the
# demo grid, its samples and the validation suite against simulated maps at training and held-out
# cosmologies. Usage: sh drivers/demo_cgan.sh OUTDIR   (writes OUTDIR/cgan/REPORT.md)
set -eu
OUT=${1:-out/demo}/cgan
mkdir -p "$OUT"
CG=bin/cgan
T0=$(date +%s)
$CG data --dir "$OUT" --scale demo --seed 1
$CG train --dir "$OUT" --scale demo --iterations 300 --checkpoint-every 50
$CG eval --dir "$OUT" --ssim-pairs 50
$CG interpolate --dir "$OUT" --n 6
T1=$(date +%s)
it=$(grep -o '"iterations": [0-9]*' "$OUT/run.json" | cut -d' ' -f2)
{
    echo "# Emulator: conditional WGAN-GP"
    echo
    echo "A demo-size conditional WGAN-GP (Perraudin et al. 2021 architecture with one stage fewer, a quarter of the"
    echo "convolution widths and half the dense ones: 32 x 32 maps of 2.34 arcmin pixels) trained for $it generator"
    echo "iterations ($((T1 - T0)) s in all, on 25 training"
    echo "cosmologies of 240 maps each). This is far from converged: the demo shows the pipeline (data, training, samples,"
    echo "validation suite at held-out cosmologies, interpolation), not the emulator's accuracy; README.md gives the"
    echo "small-scale run's table. Simulated (sets A and B) and generated maps at a held-out cosmology:"
    echo
    echo "![maps](eval/maps_26.png)"
    echo
    echo "Mean power spectra, generated vs simulated, at the same cosmology:"
    echo
    echo "![ps](eval/ps_26.png)"
    echo
    echo "One latent, sigma_8 varied at fixed Omega_m (\`cgan interpolate\`):"
    echo
    echo "![interpolation](interpolate/interp_sigma8.png)"
    echo
    sed -e 's|^#|##|' "$OUT/eval/table.md"
} > "$OUT/REPORT.md.tmp"
mv "$OUT/REPORT.md.tmp" "$OUT/REPORT.md"
