#!/bin/sh
# The DeepLSS part of `make demo`: the small pipeline end to end (pool of lognormal fields, CNN and
# power-spectrum networks for combined, lensing-only and clustering-only maps, Fisher forecasts of the
# summaries' efficiency, MDN likelihoods, ensemble MCMC, gains table, calibration, corner plots,
# sensitivity maps) into OUTDIR/deeplss,
# with its REPORT.md. Run from the repository root after `make all`:
#     sh drivers/demo_deeplss.sh OUTDIR
set -eu
if [ $# -ne 1 ]; then
    echo "usage: sh drivers/demo_deeplss.sh OUTDIR" >&2
    exit 2
fi
OUT=$1
DIR=$OUT/deeplss
if [ ! -x ./bin/deeplss ]; then
    echo "demo_deeplss.sh: ./bin/deeplss is missing (run 'make all' first)" >&2
    exit 2
fi
mkdir -p "$DIR"
# Threads sleep rather than spin while waiting: the pipeline runs many short parallel regions and the
# machine may be shared.
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export OMP_WAIT_POLICY
start=$(date +%s)
# The shortened run: the small preset with 5000 training steps instead of up to 40000 (the full run,
# `deeplss all --scale small`, takes about 40 minutes on 2 cores; README.md gives its numbers).
./bin/deeplss all --scale small --steps 5000 --out "$DIR"
end=$(date +%s)
ncpu=$(nproc 2>/dev/null || echo "?")
{
    echo
    echo "Wall time of this part (\`sh drivers/demo_deeplss.sh $OUT\`, \`deeplss all --scale small --steps 5000\`):" \
         "$((end - start)) s on $ncpu CPU(s)."
} >> "$DIR/REPORT.md"
echo "deeplss demo: $DIR/REPORT.md ($((end - start)) s)"
