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
# mutmut first runs the tests once to learn which tests reach which function; on a busy
# machine that pass has failed once without a reason, so it gets a second try.
for attempt in 1 2; do
    mutmut run --max-children "${JOBS:-2}" >mutmut-run.log 2>&1 || true
    grep -q "failed to collect stats" mutmut-run.log || break
    echo "mutmut could not collect its test statistics (attempt $attempt); see $work/mutmut-run.log"
done
mutmut export-cicd-stats >/dev/null
python - <<'PY'
import json, pathlib
stats = json.loads(pathlib.Path("mutants/mutmut-cicd-stats.json").read_text())
print("mutmut:", ", ".join(f"{k} {v}" for k, v in stats.items()))
# Caught: a test failed, or the mutant hung or crashed the tests. Missed: every test passed,
# or no selected test reaches the function.
caught = sum(stats.get(k, 0) for k in ("killed", "timeout", "segfault"))
missed = sum(stats.get(k, 0) for k in ("survived", "no_tests", "suspicious"))
if caught + missed:
    print(f"score: {caught} of {caught + missed} mutants caught ({caught / (caught + missed):.1%})")
PY
echo "survivors (mutmut show NAME in $work for the diff):"
mutmut results
