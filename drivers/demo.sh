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

# 3. DeepLSS: CNN vs power spectrum, MDN, MCMC, gains
step "deeplss"
sh drivers/demo_deeplss.sh "$OUT"

# 4. Mass mapping
step "massmap"
sh drivers/demo_massmap.sh "$OUT"

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
    echo "## 3. DeepLSS"
    echo
    sed -e 's|\](\([^)]*\))|](deeplss/\1)|g' -e 's|^#|##|' "$OUT/deeplss/REPORT.md"
    echo
    echo "## 4. Mass mapping"
    echo
    sed -e 's|\](\([^)]*\))|](massmap/\1)|g' -e 's|^#|##|' "$OUT/massmap/REPORT.md"
} > "$OUT/REPORT.md.tmp"
mv "$OUT/REPORT.md.tmp" "$OUT/REPORT.md"
step "done: $OUT/REPORT.md"
