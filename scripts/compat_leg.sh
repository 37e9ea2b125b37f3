#!/usr/bin/env bash
# One compatibility leg (make test-compat AIRFLOW=<leg>): a venv of its own with Airflow installed first
# from constraints/airflow-<leg>.txt, the provider on top (a dry run into the bare Airflow first: it must not
# move Airflow), then the tests.
# Set COMPAT_INSTALL_ONLY=1 to build the venv and stop.
set -euo pipefail
leg="$1"
python="$2"
uv="$3"
shift 3
venv=".venv-airflow-$leg"
constraints="constraints/airflow-$leg.txt"
want="$(sed -nE 's/^apache-airflow==([0-9][0-9.]*)$/\1/p' "$constraints")"
test -n "$want" || { echo "$constraints pins no apache-airflow" >&2; exit 1; }
stamp="$venv/.installed"
started=$SECONDS
if [[ ! -f "$stamp" || "$constraints" -nt "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  rm -rf "$venv"
  "$uv" venv --quiet --python "$python" "$venv"
  # Airflow first, as a team that already runs it has it.
  "$uv" pip install --python "$venv/bin/python" --quiet -c "$constraints" "apache-airflow==$want"
  # Into that bare Airflow, without constraints, would installing the provider change Airflow? It must not
  # (pip would upgrade it). Asked before the provider is installed, or the answer would be "nothing to do";
  # a dry run that fails to resolve fails the leg too.
  if ! plan="$("$uv" pip install --python "$venv/bin/python" --dry-run -e . 2>&1)"; then
    printf '%s\n' "$plan" >&2
    echo "leg $leg: the dry-run install of airflow-provider-hve into Airflow $want failed" >&2
    exit 1
  fi
  if grep -E '^ [-+] apache-airflow(-core|-task-sdk)?==' <<<"$plan"; then
    echo "leg $leg: installing airflow-provider-hve would change the installed Airflow $want" >&2
    exit 1
  fi
  # Then the provider with its test extras, from the pinned set.
  "$uv" pip install --python "$venv/bin/python" --quiet -c "$constraints" -e ".[test]"
  touch "$stamp"
fi
got="$("$venv/bin/python" -c 'import airflow; print(airflow.__version__)')"
if [[ "$got" != "$want" ]]; then
  echo "leg $leg: installed Airflow $got, wanted $want" >&2
  exit 1
fi
installed=$((SECONDS - started))
echo "== compat leg $leg: apache-airflow $got, $("$venv/bin/python" -V) (venv ready in ${installed}s)"
[[ "${COMPAT_INSTALL_ONLY:-}" == 1 ]] && exit 0
started=$SECONDS
status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=$?
echo "== compat leg $leg: apache-airflow $got: tests exited $status in $((SECONDS - started))s"
exit "$status"
