#!/usr/bin/env bash
# Resolve constraints/airflow-<leg>.txt: the pinned set the compatibility leg installs (make constraints).
# <leg> is a minor line ("3.1": its newest patch on PyPI) or an exact release ("2.11.0": the floor).
# Airflow's own constraint files live on GitHub, which this project's CI cannot reach: we resolve our own,
# for the CI's Python (3.11), with the provider's test extras, and commit them.
set -euo pipefail
leg="$1"
uv="$2"
case "$leg" in
  *.*.*) spec="apache-airflow==$leg" ;;
  *) spec="apache-airflow==$leg.*" ;;
esac
in_file="$(mktemp --suffix=.in)"
trap 'rm -f "$in_file"' EXIT
printf '%s\n-e .[test]\n' "$spec" >"$in_file"
case "$leg" in
  # Airflow 3.0 declares no upper bound on these; with cadwyn 9 / fastapi 0.16x its in-process Execution API
  # (dag.test()) refuses every task start ("Input should be a valid dictionary"). 3.1 caps them like this.
  3.0 | 3.0.*) printf 'cadwyn<5.5\nfastapi<0.118\n' >>"$in_file" ;;
  # 3.2's Execution API fails to build its routes with fastapi 0.16x (pydantic __pydantic_core_schema__);
  # cap both at what 3.3 resolves to and runs with. svcs 26 (July 2026) breaks 3.2's dag.test(): the
  # in-process Execution API's lifespan stops early (no [api_auth] jwt_secret) and svcs 26 then removes
  # app.state.svcs_registry, so every task start gets HTTP 500; svcs 25 leaves it, as 3.2.2 expects.
  3.2 | 3.2.*) printf 'cadwyn<8\nfastapi<0.137\nsvcs<26\n' >>"$in_file" ;;
esac
# Airflow's official constraints are frozen when a release ships; resolve as of then (newer releases of
# Airflow's dependencies are what users of that release would not have). The providers this one builds on
# float (a team installing it upgrades them): common-compat's sdk module (mask_secret) and the test
# extra's apache-airflow-providers-smtp>=3.2 (Oct 2026) are newer than some releases.
as_of=()
newest=(--exclude-newer-package apache-airflow-providers-common-compat=false
  --exclude-newer-package apache-airflow-providers-smtp=false)
case "$leg" in
  3.2 | 3.2.*) as_of=(--exclude-newer 2026-06-01 "${newest[@]}") ;; # 3.2.2 was uploaded on 2026-05-29
esac
case "$leg" in
  # The floor leg also holds common-compat at the floor pyproject.toml declares, so that floor is tested.
  *.*.*) sed -nE 's/^ *"(apache-airflow-providers-common-compat)>=([0-9.]+)",.*/\1==\2/p' pyproject.toml >>"$in_file" ;;
esac
out="constraints/airflow-$leg.txt"
"$uv" pip compile --quiet --python-version 3.11 --no-emit-package airflow-provider-hve \
  --custom-compile-command "make constraints  # leg $leg: $spec + airflow-provider-hve[test], Python 3.11" \
  --no-annotate --upgrade "${as_of[@]}" -o "$out" "$in_file"
echo "$out: $(grep -E '^apache-airflow==' "$out")"
