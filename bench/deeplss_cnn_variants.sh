#!/bin/sh
# deeplss_cnn_variants.sh - what a DeepLSS summary network learns in a short training, rated by its Fisher efficiency.
#
#   sh bench/deeplss_cnn_variants.sh [STEPS] [WORKDIR]      (after `make all`; defaults 2000 and /tmp/lss_cnn_variants)
#
# One pool of the small preset (256 grid cosmologies, `deeplss sim`), then, for the clustering-only probe set, the
# small CNN and variants of it (no product channels, 64 channels, 2 strided convolutions, 5 x 5 kernels, no residual
# block, learning rate 3e-3, batch 128), the hybrid CNN (spectra joined to the pooled features) and the PSD network,
# each trained STEPS steps from the same pool and rated by `deeplss fisher` (4000 fiducial observations, 400 pairs
# per parameter) on the same observations: FoM(Omega_m, sigma_8) and its ratio to the power spectra's. The fisher
# table also carries the one-point joint moments alone ("moments"), the level a network reaches when it learns only
# the pixel statistics. Each line: variant, training seconds, FoM, efficiency against Re and |.| spectra.
set -e
steps=${1:-2000}
root=${2:-/tmp/lss_cnn_variants}
bin=$(pwd)/bin
[ -x "$bin/deeplss" ] || { echo "deeplss_cnn_variants: run 'make all' first (no bin/deeplss)" >&2; exit 2; }
mkdir -p "$root"
[ -f "$root/pool/pool_fields.npy" ] || "$bin/deeplss" sim --out "$root/pool" 2>/dev/null
run() {   # run NAME NETS KEY=VALUE...
    name=$1; nets=$2; shift 2
    d="$root/$name"
    rm -rf "$d"; mkdir -p "$d"
    cp "$root/pool/deeplss.cfg" "$d/"
    ln -s "$root/pool/pool_cosmo.npy" "$root/pool/pool_fields.npy" "$d/"
    sed -i "s/^steps = .*/steps = $steps/; s/^patience = .*/patience = 0/" "$d/deeplss.cfg"
    for kv in "$@"; do sed -i "s/^${kv%%=*} = .*/${kv%%=*} = ${kv#*=}/" "$d/deeplss.cfg"; done
    t0=$(date +%s)
    "$bin/deeplss" train --out "$d" --nets "$nets" --probes gc >"$d/train.log" 2>&1
    t1=$(date +%s)
    "$bin/deeplss" fisher --out "$d" --nets "$nets" --probes gc >"$d/fisher.log" 2>&1
    row=$(grep -E "^\| clustering \| (cnn|hybrid_cnn|psd) " "$d/fisher.md" | cut -d'|' -f4-6)
    echo "$name ($*) $((t1 - t0)) s |$row"
}
echo "variant, training time | FoM | efficiency (Re) | efficiency (abs)   [$steps steps, clustering probes]"
run cnn cnn
run no_products cnn cnn_products=0
run channels64 cnn channels=64
run nconv2 cnn nconv=2
run kernel5 cnn kernel=5
run nres0 cnn nres=0
run lr3e-3 cnn lr_cnn=0.003
run batch128 cnn batch=128
run hybrid cnn cnn_hybrid=1
run psd psd
grep -E "^\| clustering \| (ps_re|ps_abs|ps_re\+moments|moments) " "$root/psd/fisher.md" | cut -d'|' -f3-5
