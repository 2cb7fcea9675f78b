#!/bin/sh
# make demo: every experiment of lss in a small version, end to end on the CPU, on built-in
# simulated data. Writes out/demo/REPORT.md with the tables and figures of this run.
set -eu
OUT=${1:-out/demo}
mkdir -p "$OUT"
T0=$(date +%s)
step() { printf '\n== demo: %s (%ss so far)\n' "$1" "$(( $(date +%s) - T0 ))" >&2; }

# 1. Theory at the DeepLSS fiducial cosmology
step "theory"
mkdir -p "$OUT/theory"
bin/lss-theory background --z 0.1,0.3,0.5,0.7,1,1.5,2 > "$OUT/theory/background.csv"
bin/lss-theory cl --nell 40 --lmin 20 --lmax 5000 --png "$OUT/theory/cl_deeplss.png" > "$OUT/theory/cl_deeplss.csv"

# 2. Forward model: fiducial maps and their spectra
step "simulation"
bin/lss-sim --out "$OUT/sim" --n 16 --seed 1
bin/lss-stats ps --maps "$OUT/sim/maps.npy" --pixel-arcmin 4.6875 --out "$OUT/sim/ps.csv"

# 2b. N-body light cone (particle mesh) next to the lognormal shells: noise-free maps and one-point moments.
# The shell library is kept: a second demo run reuses its complete entry.
step "N-body light cone"
mkdir -p "$OUT/nbody"
bin/lss-sim nbody --fiducial --out "$OUT/nbody/shells" --np 256 --steps 20 --ncone 2
bin/lss-sim --model nbody --library "$OUT/nbody/shells" --no-noise --n 16 --seed 1 --out "$OUT/nbody/nbody"
bin/lss-sim --no-noise --n 16 --seed 1 --out "$OUT/nbody/lognormal"
for m in nbody lognormal; do bin/lss-stats moments --maps "$OUT/nbody/$m/maps.npy" --out "$OUT/nbody/moments_$m.csv"; done

# 3. DeepLSS: CNN vs power spectrum, MDN, MCMC, gains
step "deeplss"
sh drivers/demo_deeplss.sh "$OUT"

# 4. Mass mapping
step "massmap"
sh drivers/demo_massmap.sh "$OUT"

# 5. Emulator: conditional WGAN-GP
step "cgan"
sh drivers/demo_cgan.sh "$OUT"

# 6. Generators: normalizing flow and diffusion model
step "flowgen"
sh drivers/demo_flowgen.sh "$OUT"

T1=$(date +%s)
{
    echo "# lss demo report"
    echo
    echo "Made by \`make demo\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPU cores, in $((T1 - T0)) s."
    echo "Every number and figure below comes from this run."
    echo
    echo "## 1. Theory (DeepLSS Table I fiducial cosmology)"
    echo
    echo "Background (\`lss-theory background\`):"
    echo
    echo '```'
    cat "$OUT/theory/background.csv"
    echo '```'
    echo
    echo "Tomographic C_ell of the four DeepLSS bins (\`lss-theory cl\`, all 36 pairs in theory/cl_deeplss.csv):"
    echo
    echo "![C_ell](theory/cl_deeplss.png)"
    echo
    echo "## 2. Simulated maps"
    echo
    echo "16 fiducial 5 x 5 deg fields with noise (\`lss-sim --n 16\`); map 0:"
    echo
    echo "![maps](sim/example.png)"
    echo
    echo "Their mean power spectra are in sim/ps.csv (\`lss-stats ps\`)."
    echo
    echo "## 2b. N-body light cone"
    echo
    echo "A particle-mesh light cone at the fiducial cosmology (\`lss-sim nbody --np 256 --steps 20 --ncone 2\`: 256^3"
    echo "particles, 2LPT, FastPM steps, $(grep -o '"seconds": [0-9.]*' "$OUT/nbody/shells/shells_0000.json" | cut -d' ' -f2) s), its"
    echo "16 field views drawn through the same projection as the lognormal shells (\`lss-sim --model nbody\`), noise-free."
    echo "N-body map 0 (top: kappa_g, bottom: delta_g):"
    echo
    echo "![nbody](nbody/nbody/example.png)"
    echo
    echo "Lognormal map 0 of the same simulator:"
    echo
    echo "![lognormal](nbody/lognormal/example.png)"
    echo
    echo "One-point moments of noise-free kappa_g (mean over the 16 maps +- their standard error, \`lss-stats moments\`; the 16"
    echo "N-body maps are 8 views of each of 2 cones, not independent, so their error is understated):"
    echo
    echo "| bin | skewness N-body | skewness lognormal | kurtosis N-body | kurtosis lognormal |"
    echo "|---|---|---|---|---|"
    for b in 0 1 2 3; do
        row() { awk -F, -v c="$b" -v s="$2" '$1 == c && $2 == s { printf "%.3f +- %.3f", $3, $5 }' "$OUT/nbody/moments_$1.csv"; }
        echo "| $((b + 1)) | $(row nbody skewness) | $(row lognormal skewness) | $(row nbody kurtosis) | $(row lognormal kurtosis) |"
    done
    echo
    echo "Two cones of one $(grep -o '"box_mpc_h": [0-9.]*' "$OUT/nbody/shells/shells_0000.json" | cut -d' ' -f2) Mpc/h box: the N-body errors are large (a few haloes dominate"
    echo "the tails). BENCHMARKS.md has the same statistics over many boxes, the power spectra and the 1-arcmin comparison."
    echo
    echo "## 3. DeepLSS"
    echo
    sed -e 's|\](\([^)]*\))|](deeplss/\1)|g' -e 's|^#|##|' "$OUT/deeplss/REPORT.md"
    echo
    echo "## 4. Mass mapping"
    echo
    sed -e 's|\](\([^)]*\))|](massmap/\1)|g' -e 's|^#|##|' "$OUT/massmap/REPORT.md"
    echo
    echo "## 5. Emulator"
    echo
    sed -e 's|\](\([^)]*\))|](cgan/\1)|g' -e 's|^#|##|' "$OUT/cgan/REPORT.md"
    echo
    echo "## 6. Generators"
    echo
    sed -e 's|\](\([^)]*\))|](flowgen/\1)|g' -e 's|^#|##|' "$OUT/flowgen/REPORT.md"
} > "$OUT/REPORT.md.tmp"
mv "$OUT/REPORT.md.tmp" "$OUT/REPORT.md"
step "done: $OUT/REPORT.md"
