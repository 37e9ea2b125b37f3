#!/usr/bin/env bash
# The venv of one deployment-test leg (make test-deploy): .venv-deploy-<leg>, apart from the main .venv and the
# compatibility legs' .venv-airflow-<leg>. Airflow and the provider with its test extras from the leg's pinned set
# constraints/airflow-<leg>.txt, plus the CeleryExecutor's and PostgreSQL's packages from constraints/deploy-<leg>.txt
# (scripts/deploy/constraints.sh). Rebuilt when a constraints file or pyproject.toml is newer than the venv.
#   scripts/deploy/venv.sh <leg> <python> <uv>
set -euo pipefail
leg="$1"
python="$2"
uv="$3"
venv=".venv-deploy-$leg"
base="constraints/airflow-$leg.txt"
extra="constraints/deploy-$leg.txt"
want="$(sed -nE 's/^apache-airflow==([0-9][0-9.]*)$/\1/p' "$base")"
test -n "$want" || { echo "$base pins no apache-airflow" >&2; exit 1; }
test -f "$extra" || { echo "$extra is missing: run scripts/deploy/constraints.sh $leg $uv" >&2; exit 1; }
stamp="$venv/.installed"
started=$SECONDS
if [[ ! -f "$stamp" || "$base" -nt "$stamp" || "$extra" -nt "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  rm -rf "$venv"
  "$uv" venv --quiet --python "$python" "$venv"
  # Everything constraints/deploy-<leg>.txt pins directly (asyncpg on 3.x), besides Airflow and the provider.
  mapfile -t extras < <(grep -oE '^(apache-airflow-providers-celery|celery|redis|psycopg2-binary|asyncpg)==' "$extra" | tr -d '=')
  "$uv" pip install --python "$venv/bin/python" --quiet -c "$base" -c "$extra" \
    "apache-airflow==$want" -e ".[test]" "${extras[@]}"
  touch "$stamp"
fi
got="$("$venv/bin/python" -c 'import airflow; print(airflow.__version__)')"
if [[ "$got" != "$want" ]]; then
  echo "deploy leg $leg: installed Airflow $got, wanted $want" >&2
  exit 1
fi
celery_provider="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("apache-airflow-providers-celery"))')"
echo "== deploy leg $leg: apache-airflow $got, apache-airflow-providers-celery $celery_provider, $("$venv/bin/python" -V) (venv ready in $((SECONDS - started))s)"
