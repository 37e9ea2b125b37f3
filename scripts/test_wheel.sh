#!/usr/bin/env bash
# make test-wheel: build the wheel and sdist (python -m build), check them (twine check), then for each Airflow
# leg install the wheel into a fresh venv beside that Airflow (from constraints/airflow-<leg>.txt), parse every
# example DAG with a DagBag and run the four that need no triggerer with dag.test(), with the provider from the
# installed wheel, from a temporary folder (scripts/wheel_smoke.py), not the checkout.
# Usage: scripts/test_wheel.sh <python> <uv> <leg>...
set -euo pipefail
python="$1"
uv="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"  # absolute: the legs run from a temporary folder
shift 2
root="$(pwd)"
work="$(mktemp -d -t hve-test-wheel-XXXXXX)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS
# The build tools live in a venv of their own: the project's venv and the legs' stay as they are.
"$uv" venv --quiet --python "$python" "$work/tools"
"$uv" pip install --python "$work/tools/bin/python" --quiet build twine
# The sdist first, then the wheel built from the unpacked sdist (what python -m build does when asked for both):
# a file the sdist forgot breaks the wheel here, not on a user's machine.
PATH="$(dirname "$uv"):$PATH" "$work/tools/bin/python" -m build --installer uv --outdir "$work/dist" . >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; exit 1; }
"$work/tools/bin/python" -m twine check --strict "$work"/dist/*
wheel="$(ls "$work"/dist/*.whl)"
sdist="$(ls "$work"/dist/*.tar.gz)"
echo "== test-wheel: built $(basename "$wheel") and $(basename "$sdist") in $((SECONDS - started))s"
# The wheel holds the package, its templates and py.typed, and nothing of the checkout's tests or DAGs.
"$work/tools/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ("airflow_provider_hve/py.typed", "airflow_provider_hve/templates/report.html.j2",
               "airflow_provider_hve/sandbox/__main__.py"):
    assert needed in names, f"{needed} is missing from the wheel"
stray = [n for n in names if n.startswith(("tests/", "example_dags/", "scripts/", "benchmarks/"))]
assert not stray, f"the wheel holds files of the checkout: {stray[:5]}"
PY
for leg in "$@"; do
  leg_started=$SECONDS
  constraints="$root/constraints/airflow-$leg.txt"
  want="$(sed -nE 's/^apache-airflow==([0-9][0-9.]*)$/\1/p' "$constraints")"
  venv="$work/venv-$leg"
  "$uv" venv --quiet --python "$python" "$venv"
  # Airflow and the wheel (with the sandbox extra: the smoke test runs against it) from the leg's pinned set.
  "$uv" pip install --python "$venv/bin/python" --quiet -c "$constraints" "apache-airflow==$want" "$wheel[sandbox]"
  echo "== test-wheel: Airflow $want + the wheel in a fresh venv in $((SECONDS - leg_started))s"
  (cd "$work" && env -u PYTHONPATH "$venv/bin/python" -I "$root/scripts/wheel_smoke.py" "$root/example_dags" "$root")
  echo "== test-wheel: leg $leg passed in $((SECONDS - leg_started))s"
done
echo "== test-wheel: passed in $((SECONDS - started))s"
