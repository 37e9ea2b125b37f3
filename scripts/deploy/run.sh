#!/usr/bin/env bash
# make test-deploy: the deployment test (tests/deploy) on each leg in turn, one deployment at a time, each in its
# own venv (scripts/deploy/venv.sh). Every leg runs even when one before it failed; the run fails at the end, naming
# each Airflow version that failed. Prints the time of each part.
#   scripts/deploy/run.sh <python> <uv> "<legs>" [pytest args...]
set -euo pipefail
python="$1"
uv="$2"
legs="$3"
shift 3
failed=()
for leg in $legs; do
  started=$SECONDS
  if ! scripts/deploy/venv.sh "$leg" "$python" "$uv"; then
    echo "== deploy leg $leg: FAILED to build .venv-deploy-$leg after $((SECONDS - started))s"
    failed+=("$leg (venv)")
    continue
  fi
  started=$SECONDS
  status=0
  HVE_DEPLOY_REQUIRED=1 ".venv-deploy-$leg/bin/python" -m pytest -q -p no:cacheprovider tests/deploy "$@" || status=$?
  airflow="$(".venv-deploy-$leg/bin/python" -c 'import airflow; print(airflow.__version__)')"
  if ((status == 0)); then
    echo "== deploy leg $leg: Airflow $airflow passed in $((SECONDS - started))s"
  else
    echo "== deploy leg $leg: Airflow $airflow FAILED (pytest exited $status) after $((SECONDS - started))s"
    failed+=("$leg (Airflow $airflow)")
  fi
done
if ((${#failed[@]})); then
  printf '== deployment test FAILED on: %s\n' "${failed[@]}"
  exit 1
fi
echo "== deployment test passed on: $legs"
