#!/usr/bin/env bash
# The main job on the synthetic world: synth -> train (small) -> encode -> search / recommend -> eval.
# Usage: scripts/demo.sh [WORKDIR]   (default: demo_out/; about 6 minutes on a 2-core CPU)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MMREC=.venv/bin/mmrec
WORK="${1:-demo_out}"
CONFIG="${MMREC_CONFIG:-small}"

step() { printf '\n=== %s ===\n' "$*"; }
SECONDS=0

step "1/5 synthetic world: 756 clips (every color x shape x motion 6 times), 300 users"
rm -rf "$WORK"
$MMREC synth --out "$WORK/data" --videos 756 --users 300 --seed 0

step "2/5 train the '$CONFIG' config (text <-> video and history -> next video, contrastive)"
$MMREC train --config "$CONFIG" --data "$WORK/data" --out "$WORK/run"

step "3/5 encode the whole catalog into a bundle (model + embeddings + FAISS index)"
$MMREC encode --model "$WORK/run" --catalog "$WORK/data/catalog.csv" --out "$WORK/bundle"

step "4/5 text searches and recommendations"
$MMREC search --bundle "$WORK/bundle" -k 5 \
  "a red circle moving left" "a blue square growing" "a white triangle moving up" \
  "a crimson ball drifting leftward"
echo
$MMREC recommend --bundle "$WORK/bundle" -k 5 --history \
  "a green ball moving up" "green dots rising" "a bright green circle going up"
echo
$MMREC recommend --bundle "$WORK/bundle" -k 5 --history \
  "a purple square shrinking" "yellow triangles moving right" "a yellow spike sliding to the right" \
  "watch the yellow triangle traveling right"

step "5/5 evaluation on held-out videos and each user's last event (full ranking)"
$MMREC eval --bundle "$WORK/bundle" --data "$WORK/data"

echo
echo "demo finished in ${SECONDS}s; bundle: $WORK/bundle  (try: .venv/bin/mmrec search --bundle $WORK/bundle \"an orange square moving down\")"
