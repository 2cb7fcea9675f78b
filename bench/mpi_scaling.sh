#!/usr/bin/env bash
# mpi_scaling.sh - strong scaling of the MPI build at 1 and 2 ranks on this machine, against the serial
# build at its best (one process, OpenMP threads on every core), measured in the same run, rounds
# interleaved; medians. Needs `make mpi` (bin/mpi/*), build/mpi/mpi_dp and build/bench/mpi_dp (make
# build/bench/mpi_dp build/mpi/mpi_dp).
#   bash bench/mpi_scaling.sh [ROUNDS] [OUTDIR]      (defaults 3, /tmp/lss_mpi_bench)
# Rows: simulation throughput (lss-sim --prior maps per second), training step time (the DeepLSS ResNet,
# small and paper layer sizes, batch 32: bench/mpi_dp.c), sampler speed (massmap sample: posterior chains
# per second on a 64 x 64 mock), one N-body light-cone box split over the ranks (bench/mpi_nbody.c: seconds per
# step, memory per rank; 128^3 and 192^3 particles, mesh 2 np). Every MPI run uses one thread per rank.
# ONLY=nbody runs the N-body rows alone.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-3}
D=${2:-/tmp/lss_mpi_bench}
NC=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
ONLY=${ONLY:-}
for b in bin/lss-sim bin/massmap bin/mpi/lss-sim bin/mpi/massmap build/bench/mpi_dp build/mpi/mpi_dp build/bench/mpi_nbody build/mpi/mpi_nbody; do
    [ -x "$b" ] || { echo "mpi_scaling: $b missing (make mpi build/bench/mpi_dp build/mpi/mpi_dp build/bench/mpi_nbody build/mpi/mpi_nbody)"; exit 1; }
done
rm -rf "$D" && mkdir -p "$D"
bin/massmap mock --size 64 --nfields 1 --out "$D/mm" > /dev/null 2>&1
MM="sample --shear $D/mm/shear.npy --noise-var $D/mm/noise_var.npy --ps $D/mm/ps.csv --nsamples 64 --batch 4"
now() { date +%s.%N; }
# wall seconds of a command
wall() { local t0 t1; t0=$(now); "$@" > "$D/last.log" 2>&1 || { cat "$D/last.log"; exit 1; }; t1=$(now); echo "$t1 - $t0" | bc -l; }
declare -A T
add() { T[$1]="${T[$1]:-} $2"; }
step() { grep -o '[0-9.]* s per step' "$D/last.log" | cut -d' ' -f1; }
nbstep() { grep -o '[0-9.]* s per step' "$D/last.log" | head -1 | cut -d' ' -f1; }
nbmem() { grep -o 'peak memory [0-9]* MB' "$D/last.log" | cut -d' ' -f3; }
for ((k = 1; k <= R; k++)); do
    echo "round $k of $R" >&2
    for np in 128 192; do
        OMP_NUM_THREADS=$NC build/bench/mpi_nbody $np > "$D/last.log"; add nb${np}_serial_best "$(nbstep)"; add nbm${np}_serial_best "$(nbmem)"
        grep -o 'shells hash [0-9a-f]*' "$D/last.log" > "$D/nbhash1_$np"
        OMP_NUM_THREADS=1 build/bench/mpi_nbody $np > "$D/last.log"; add nb${np}_serial_1 "$(nbstep)"; add nbm${np}_serial_1 "$(nbmem)"
        OMP_NUM_THREADS=1 mpirun --oversubscribe -np 1 build/mpi/mpi_nbody $np > "$D/last.log"; add nb${np}_mpi_1 "$(nbstep)"; add nbm${np}_mpi_1 "$(nbmem)"
        OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 build/mpi/mpi_nbody $np > "$D/last.log"; add nb${np}_mpi_2 "$(nbstep)"; add nbm${np}_mpi_2 "$(nbmem)"
        grep -o '[0-9.]* MB sent per step' "$D/last.log" > "$D/nbcomm_$np"
        grep -o 'shells hash [0-9a-f]*' "$D/last.log" > "$D/nbhash2_$np"
        OMP_NUM_THREADS=1 mpirun --oversubscribe -np 3 build/mpi/mpi_nbody $np > "$D/last.log"; add nb${np}_mpi_3 "$(nbstep)"; add nbm${np}_mpi_3 "$(nbmem)"
        OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 build/mpi/mpi_nbody $np $((2 * np)) 10 1 > "$D/last.log"; add nb${np}_lean_2 "$(nbstep)"; add nbm${np}_lean_2 "$(nbmem)"
    done
    [ "$ONLY" = nbody ] && continue
    add sim_serial_best "$(OMP_NUM_THREADS=$NC wall bin/lss-sim --out "$D/s" --n 192 --prior --seed $k)"
    add sim_serial_1    "$(OMP_NUM_THREADS=1 wall bin/lss-sim --out "$D/s" --n 192 --prior --seed $k)"
    add sim_mpi_1       "$(OMP_NUM_THREADS=1 wall mpirun --oversubscribe -np 1 bin/mpi/lss-sim --out "$D/s" --n 192 --prior --seed $k)"
    add sim_mpi_2       "$(OMP_NUM_THREADS=1 wall mpirun --oversubscribe -np 2 bin/mpi/lss-sim --out "$D/s" --n 192 --prior --seed $k)"
    for sc in small paper; do
        n=$([ $sc = small ] && echo 20 || echo 3)
        OMP_NUM_THREADS=$NC build/bench/mpi_dp $sc $n 1 > "$D/last.log"; add train_${sc}_serial_best "$(step)"
        OMP_NUM_THREADS=1 build/bench/mpi_dp $sc $n 2 > "$D/last.log"; add train_${sc}_serial_1 "$(step)"
        grep -o 'parameters hash [0-9a-f]*' "$D/last.log" > "$D/hash1_$sc"
        OMP_NUM_THREADS=1 mpirun --oversubscribe -np 1 build/mpi/mpi_dp $sc $n 2 > "$D/last.log"; add train_${sc}_mpi_1 "$(step)"
        OMP_NUM_THREADS=1 mpirun --oversubscribe -np 2 build/mpi/mpi_dp $sc $n 2 > "$D/last.log"; add train_${sc}_mpi_2 "$(step)"
        grep -o '[0-9.]* MB sent per step\|alone: [0-9.]* s' "$D/last.log" | tr '\n' ' ' > "$D/comm_$sc"
        grep -o 'parameters hash [0-9a-f]*' "$D/last.log" > "$D/hash2_$sc"
    done
    add start_mpi_2     "$(wall mpirun --oversubscribe -np 2 bin/mpi/lss-sim --help)"
    add mm_serial_best "$(OMP_NUM_THREADS=$NC wall bin/massmap $MM --out "$D/p")"
    add mm_serial_1    "$(OMP_NUM_THREADS=1 wall bin/massmap $MM --out "$D/p")"
    add mm_mpi_1       "$(OMP_NUM_THREADS=1 wall mpirun --oversubscribe -np 1 bin/mpi/massmap $MM --out "$D/p")"
    add mm_mpi_2       "$(OMP_NUM_THREADS=1 wall mpirun --oversubscribe -np 2 bin/mpi/massmap $MM --out "$D/p")"
done
med() { echo "$@" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $R interleaved rounds, medians"
printf '%-34s %12s %12s %12s %12s %10s\n' "workload (unit)" "serial best" "serial 1 thr" "MPI 1 rank" "MPI 2 ranks" "2r / best"
row() { # name unit key invert(1: value is seconds of a fixed job -> rate = work / s)
    local b s1 m1 m2; b=$(med ${T[${3}_serial_best]}); s1=$(med ${T[${3}_serial_1]}); m1=$(med ${T[${3}_mpi_1]}); m2=$(med ${T[${3}_mpi_2]})
    printf '%-34s %12.4g %12.4g %12.4g %12.4g %9.2fx\n' "$1 ($2)" "$b" "$s1" "$m1" "$m2" "$(echo "$b / $m2" | bc -l)"
}
if [ "$ONLY" != nbody ]; then
row "lss-sim 192 maps --prior" "s" sim
row "DeepLSS CNN step, small" "s/step" train_small
row "DeepLSS ResNet step, paper sizes" "s/step" train_paper
row "massmap sample 64 chains 64x64" "s" mm
fi
for np in 128 192; do
    row "one N-body box ${np}^3, mesh $((2 * np))" "s/step" nb$np
    row "  peak memory per rank" "MB" nbm$np
    echo "  2 ranks, lean (in-place transposes): $(med ${T[nb${np}_lean_2]}) s/step, $(med ${T[nbm${np}_lean_2]}) MB per rank"
    echo "  3 ranks (oversubscribed): $(med ${T[nb${np}_mpi_3]}) s/step, $(med ${T[nbm${np}_mpi_3]}) MB per rank; rank 0 sends $(cat "$D/nbcomm_$np") at 2 ranks; shells serial / 2 ranks: $(cat "$D/nbhash1_$np") / $(cat "$D/nbhash2_$np")"
done
[ "$ONLY" = nbody ] && exit 0
echo "(2r / best: serial-best time over 2-rank time; > 1 means the 2-rank run is faster)"
echo "mpirun start-up and exit, 2 ranks (bin/mpi/lss-sim --help): $(med ${T[start_mpi_2]}) s (in the wall times of the lss-sim and massmap rows)"
echo "communication per training step (rank 0, 2 ranks, 2 shards; 'alone': seconds of the ordered sum by itself): small $(cat "$D/comm_small"), paper $(cat "$D/comm_paper")"
echo "parameters after training, serial build vs 2 ranks (2 shards each): small $(cat "$D/hash1_small") / $(cat "$D/hash2_small"), paper $(cat "$D/hash1_paper") / $(cat "$D/hash2_paper")"
