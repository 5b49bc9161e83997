#!/bin/bash
# A study split over a Slurm job array: each array task runs its shard of the experiment into the
# shared run folder (robust-ssl reads SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT and
# SLURM_ARRAY_TASK_MIN, so no --shard is needed); a dependent job merges the shard stores and
# writes the report. Shards that share the run folder share its trained heads and feature cache
# (both written atomically); each shard has its own store, so they never contend.
#
#   jid=$(sbatch --parsable examples/slurm-array.sh study.toml runs/study)
#   sbatch --dependency=afterok:$jid --wrap "robust-ssl merge runs/study && robust-ssl report runs/study"
#
# A killed or preempted array task resumes where it stopped when it is run again (sbatch
# --requeue, or resubmit the same array index).
#SBATCH --job-name=robust-ssl
#SBATCH --array=0-7
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --time=12:00:00
#SBATCH --requeue
set -euo pipefail
EXPERIMENT=${1:?usage: sbatch examples/slurm-array.sh EXPERIMENT.toml RUN_DIR}
RUN_DIR=${2:?usage: sbatch examples/slurm-array.sh EXPERIMENT.toml RUN_DIR}
exec robust-ssl run "$EXPERIMENT" --out "$RUN_DIR"
