#!/bin/sh
# Plain-CI version of .github/workflows/stella-plan.yml: run it in the pull request's checkout.
# Prints the plan as Markdown (post it as a comment with your CI's API) and exits like `stella plan`:
# 0 everything allowed, 1 something pending or denied (normal while approvals come in),
# 2 invalid manifests, 3 registry or Git unavailable.
set -u
BASE=${BASE:-origin/main}
git fetch origin main stella/evidence:refs/heads/stella/evidence 2>/dev/null || true
stella validate || exit 2
stella plan --base "$BASE" -o markdown > plan.md
status=$?
cat plan.md
exit $status
