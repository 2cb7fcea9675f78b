#!/bin/sh
# Training step time and seconds per sample of the two generators of `flowgen` at the small scale's sizes (32 x 32 maps,
# batch 32; flow: 3 levels x 4 steps, 32 conditioner channels; diffusion: U-net width 16, without a skip and with the
# default covariance skip), on this machine.
# Usage: sh bench/flowgen_timing.sh [STEPS]   (needs bin/flowgen; writes under a temporary directory)
set -eu
STEPS=${1:-40}
FG=bin/flowgen
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
$FG data --dir "$D" --scale small --ntrain 512 --nvalid 32 --ntest 32 2> /dev/null
# the diffusion model without a skip first, then with the default (the covariance skip), which the samplers use
for m in flow "diffusion 0" diffusion; do
    set -- $m
    $FG train --dir "$D" --model $1 --steps "$STEPS" --checkpoint-every "$STEPS" --hidden 32 --c0 16 ${2:+--gauss $2} 2> /dev/null
    printf '%-10s training%s: %s s per step (batch 32)\n' $1 "${2:+ (--gauss $2)}" "$(grep -o '"seconds_per_step": [0-9.e-]*' "$D/$1/run.json" | cut -d' ' -f2)"
done
$FG sample --dir "$D" --model flow --n 64 --out "$D/s.npy" 2>&1 | sed -n 's/.*(\(.*\) s per map).*/flow       sampling: \1 s per map (64 maps)/p'
for s in "ancestral 1000" "ddim 50" "ddim2 50" "ode 0"; do
    set -- $s
    $FG sample --dir "$D" --model diffusion --sampler "$1" --sampler-steps $([ "$2" = 0 ] && echo 1 || echo "$2") --n 32 --out "$D/s.npy" 2>&1 |
        sed -n "s/.*(\(.*\) s per map).*/diffusion  sampling, $1 $2: \1 s per map (32 maps)/p"
done
