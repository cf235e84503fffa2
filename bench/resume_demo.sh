#!/usr/bin/env bash
# A PPO run killed mid-way (SIGKILL, no chance to clean up) resumes from its last checkpoint and finishes.
set -u
cd "$(dirname "$0")/.."
export RLHF_WORKBENCH_RUNS=${RLHF_WORKBENCH_RUNS:-/tmp/rlhf-resume-demo} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
mkdir -p "$RLHF_WORKBENCH_RUNS"
ARGS="--prompts demo --num-prompts 8 --eval-prompts 0 --batch-size 8 --minibatch-size 8 --num-iterations 6 --max-new-tokens 16 --save-every 2 --seed 0 --run-name resume-demo"
.venv/bin/python -m core.trainers.ppo $ARGS > "$RLHF_WORKBENCH_RUNS/first.log" 2>&1 &
pid=$!
run=""
while true; do
  run=$(ls -d $RLHF_WORKBENCH_RUNS/*resume-demo 2>/dev/null | head -1)
  if [ -n "$run" ] && [ -d "$run/checkpoints/step-000004" ]; then break; fi
  sleep 1
done
kill -9 $pid; wait $pid 2>/dev/null
echo "killed at: $(python3 -c "import json;print(json.load(open('$run/status.json')))")"
echo "metrics rows before resume: $(wc -l < $run/metrics.jsonl); checkpoints: $(ls $run/checkpoints)"
.venv/bin/python -m core.trainers.ppo --resume-from "$run" > "$RLHF_WORKBENCH_RUNS/resume.log" 2>&1
echo "resume rc=$?"
echo "after resume: $(python3 -c "import json;print(json.load(open('$run/status.json'))['status'])"); steps logged: $(python3 -c "import json;print([json.loads(l)['step'] for l in open('$run/metrics.jsonl')])")"
