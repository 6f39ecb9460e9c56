#!/usr/bin/env bash
# Knowledge-distillation soft labels and cross-architecture evaluation on digits (CPU).
#
# Random and herding IPC1/IPC10 sets evaluated with their hard labels and relabelled by a
# ConvNet teacher (30 epochs on the real training split) at T = 1, 2, 4, 8; then one
# cross-architecture table per labelling of herding IPC10. ConvNet evaluation protocol,
# 300 epochs, 5 runs. Results: benchmarks/results/kd_relabel_digits.md.
#
# usage: benchmarks/kd_relabel_digits.sh [OUT_DIR]   (default runs/kd_digits)
set -euo pipefail
B=${1:-runs/kd_digits}
export OMP_NUM_THREADS=1  # tiny models: one thread is fastest on a shared CPU
F="fedcond"
ARCH=convnet,mlp,lenet,alexnet,vgg11,resnet18

for m in random herding; do for k in 1 10; do
  $F distill --dataset digits --method $m --ipc $k --out $B/$m$k --device cpu --threads 1
done; done
$F relabel $B/random1/synthetic.safetensors --dataset digits --out $B/random1-T1.safetensors \
  --teacher-epochs 30 --temperature 1 --save-teacher $B/teacher.safetensors --device cpu
for m in random herding; do for k in 1 10; do for T in 1 2 4 8; do
  [ -f $B/$m$k-T$T.safetensors ] || $F relabel $B/$m$k/synthetic.safetensors --dataset digits \
    --out $B/$m$k-T$T.safetensors --teacher $B/teacher.safetensors --temperature $T --device cpu
done; done; done

for m in random herding; do for k in 1 10; do
  $F evaluate $B/$m$k/synthetic.safetensors --dataset digits --runs 5 --device cpu --json $B/eval-$m$k-hard.json
  for T in 1 2 4 8; do
    $F evaluate $B/$m$k-T$T.safetensors --dataset digits --runs 5 --device cpu --json $B/eval-$m$k-T$T.json
  done
done; done

$F evaluate $B/herding10/synthetic.safetensors --dataset digits --runs 5 --device cpu --models $ARCH \
  --json $B/arch-herding10-hard.json
for T in 1 2 4; do
  $F evaluate $B/herding10-T$T.safetensors --dataset digits --runs 5 --device cpu --models $ARCH \
    --json $B/arch-herding10-T$T.json
done
