#!/usr/bin/env bash
# Mutation testing of xmem's pure modules with mutmut (configured in pyproject.toml,
# [tool.mutmut]). Not part of CI: it takes tens of minutes on 2 cores.
#
#   bash tests/mutation/run.sh            # every mutant of the modules in only_mutate
#   JOBS=4 bash tests/mutation/run.sh     # more parallel children on a bigger machine
#
# It works on a copy of the working tree in a temporary folder (mutmut writes a mutants/
# tree beside the code), prints the score and the surviving mutants, and leaves the copy
# there so that `cd FOLDER && mutmut show NAME` shows any mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pip install --quiet 'mutmut==3.8.1'
work=$(mktemp -d "${TMPDIR:-/tmp}/xmem-mutation.XXXXXX")
# Tracked and new (not ignored) files, as they are in the working tree.
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work"
cd "$work"
mutmut run --max-children "${JOBS:-2}" >mutmut-run.log 2>&1 || true
tail -n 3 mutmut-run.log
mutmut export-cicd-stats >/dev/null
python - <<'PY'
import json, pathlib
stats = json.loads(pathlib.Path("mutants/mutmut-cicd-stats.json").read_text())
killed = stats.get("killed", 0)
total = stats.get("total", 0)
print("mutmut:", ", ".join(f"{k} {v}" for k, v in stats.items()))
counted = total - stats.get("skipped", 0) - stats.get("not_checked", 0)
if counted:
    print(f"score: {killed} of {counted} mutants killed ({killed / counted:.0%})")
PY
echo "survivors (mutmut show NAME in $work for the diff):"
mutmut results
