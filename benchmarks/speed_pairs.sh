#!/bin/bash
# Every speed pair of docs/speed.md on this machine, each soundry figure beside its peer in
# the same session, as JSON lines (one per benchmark), then the codec step's profile table.
#
#   bash benchmarks/speed_pairs.sh [PEERS_DIR] [DAC_PEER_PYTHON] > speed.log
#
# PEERS_DIR holds the peer scripts (default ../shared/peers); DAC_PEER_PYTHON is the python of
# a venv with descript-audio-codec (default ../.venv-peer-dac/bin/python; see the peers'
# README). Run it on a quiet machine; set the AVX2 variables in the environment to time
# the AVX2 kernels on a CPU that has more:
#   ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
# bf16 lines are skipped (with a note) where the CPU has no native bf16 matmul.
set -u
cd "$(dirname "$0")/.."
PEERS=${1:-../shared/peers}
DACPY=${2:-../.venv-peer-dac/bin/python}
PY=${PYTHON:-.venv/bin/python}
SOUNDRY=${SOUNDRY:-.venv/bin/soundry}
json() { grep '^{' || true; }
native_bf16=$($PY -c "import torch; print(int(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()))" 2>/dev/null || echo 0)
echo "## $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p') capability=$($PY -c 'import torch; print(torch.backends.cpu.get_cpu_capability())') native_bf16=$native_bf16"

# token LM decoding (512d, 8 layers, 4 codebooks, 250 frames, batch 1)
$PY "$PEERS/hf_lm_generate.py" --dim 512 --layers 8 --heads 8 --codebooks 4 --card 1024 --steps 250 2>&1 | json
$PY benchmarks/lm_generate.py --precision fp32 2>&1 | json
$PY benchmarks/lm_generate.py --precision int8 2>&1 | json
$PY benchmarks/lm_generate.py --precision int8 --compile 2>&1 | json
$PY "$PEERS/hf_lm_generate.py" --dim 512 --layers 8 --heads 8 --codebooks 4 --card 1024 --steps 250 2>&1 | json

# codec inference (DAC 16 kHz architecture, 10 s, encode + decode)
$PY "$PEERS/hf_dac_infer.py" --seconds 10 2>&1 | json
$PY benchmarks/codec_inference.py --preset dac-16k --seconds 10 2>&1 | json
[ "$native_bf16" = 1 ] && $PY benchmarks/codec_inference.py --preset dac-16k --seconds 10 --precision bf16 2>&1 | json

# codec training step (DAC 16 kHz, batch 2 x 0.384 s)
if [ -x "$DACPY" ]; then
  "$DACPY" "$PEERS/dac_train_step.py" --sr 16000 --batch 2 --seconds 0.38 --steps 3 2>&1 | json
else
  echo "# no descript-audio-codec venv at $DACPY: the training-step peer is skipped"
fi
$PY benchmarks/train_step.py --recipe recipes/codec/dac-16k.yaml --batch-size 2 --samples 6144 --steps 3 --threads 2 2>&1 | json
[ "$native_bf16" = 1 ] && $PY benchmarks/train_step.py --recipe recipes/codec/dac-16k.yaml --batch-size 2 --samples 6144 --steps 3 --threads 2 --precision bf16 2>&1 | json
[ "$native_bf16" = 1 ] || echo "# no native bf16 on this CPU: bf16 lines skipped"

# where the codec step's time goes
data=$(mktemp -d)
$SOUNDRY data synth "$data" --kind speechlike --count 16 --seconds 2 --sample-rate 16000 >/dev/null 2>&1
$SOUNDRY profile recipes/codec/dac-16k.yaml --data "$data" --steps 6 --warmup 3 --threads 2 \
  data.batch_size=2 data.segment_seconds=0.384 "schedule.phases=[{name: gan}]" 2>&1 | tail -25
rm -rf "$data"
echo "## done $(date -u +%FT%TZ)"
