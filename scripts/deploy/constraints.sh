#!/usr/bin/env bash
# Resolve constraints/deploy-<leg>.txt: what the deployment test (make test-deploy) installs on top of the
# compatibility leg's pinned set constraints/airflow-<leg>.txt: the Celery provider, Celery with Redis, and the
# PostgreSQL driver. Resolved against that set (-c), so Airflow and everything pinned there stay as they are; the
# file lists only the packages that set does not pin. Run it again after `make constraints` changed the leg's set:
#   scripts/deploy/constraints.sh 3.3 .venv/bin/uv
set -euo pipefail
leg="$1"
uv="$2"
base="constraints/airflow-$leg.txt"
out="constraints/deploy-$leg.txt"
airflow="$(sed -nE 's/^apache-airflow==([0-9][0-9.]*)$/\1/p' "$base")"
test -n "$airflow" || { echo "$base pins no apache-airflow" >&2; exit 1; }
in_file="$(mktemp --suffix=.in)"
full="$(mktemp --suffix=.txt)"
trap 'rm -f "$in_file" "$full"' EXIT
# apache-airflow-providers-celery 3.26.0 declares apache-airflow>=2.11.0 and celery[redis]>=5.5,<6; without the
# floor the resolver falls back to 3.6.1 on 2.11 (celery 5.7 needs a newer packaging than 2.11's set pins).
cat >"$in_file" <<IN
apache-airflow==$airflow
-e .[test]
apache-airflow-providers-celery>=3.26.0
celery[redis]
redis
psycopg2-binary
IN
# Airflow 3 also opens the metadata database asynchronously: with a postgresql URL it uses asyncpg.
case "$leg" in
  3.*) echo asyncpg >>"$in_file" ;;
esac
"$uv" pip compile --quiet --python-version 3.11 --no-emit-package airflow-provider-hve --no-annotate --no-header \
  -c "$base" -o "$full" "$in_file"
{
  echo "# scripts/deploy/constraints.sh $leg: what make test-deploy adds to $base (Airflow $airflow) for the"
  echo "# CeleryExecutor on Redis and a PostgreSQL metadata database; resolved against $base, Python 3.11."
  grep -vxF -f <(grep -vE '^\s*(#|$)' "$base") "$full" | grep -vE '^\s*(#|$)'
} >"$out"
echo "$out: $(grep -E '^(apache-airflow-providers-celery|celery|redis|psycopg2-binary|asyncpg)==' "$out" | tr '\n' ' ')"
