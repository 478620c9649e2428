#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: style checks (pep8), then
# unit tests, the conformance test over the shared Nova corpus and the
# functional tests against a real RabbitMQ, MariaDB and PostgreSQL
# (installed with apt-get when missing; the database servers are started and
# given oslo.db's openstack_citest account) in one tox environment ("all").
#
# Usage: tools/run-tests.sh [tox environments, default "pep8,all"]
set -euo pipefail

cd "$(dirname "$0")/.."
envs=${1:-pep8,all}
python=${PYTHON:-python3}

log() {
    printf 'run-tests: %s\n' "$*" >&2
}

case ",$envs," in
    *,all,*|*,functional,*)
        ./tools/ensure-rabbitmq.sh
        ./tools/ensure-mariadb.sh
        ./tools/ensure-postgresql.sh
        ;;
esac

# Debian and Ubuntu ship venv support in a separate package.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing python3-venv"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
    else
        log "$python cannot create virtual environments:" \
            "install python3-venv (apt-get install python3-venv)"
        exit 1
    fi
fi

bootstrap=.tox/.bootstrap
if [ ! -x "$bootstrap/bin/tox" ]; then
    log "installing tox into $bootstrap"
    "$python" -m venv "$bootstrap"
    "$bootstrap/bin/pip" install --quiet --upgrade pip
    "$bootstrap/bin/pip" install --quiet 'tox>=4'
fi

report=.tox/junit.xml
rm -f "$report"
status=0
style=
pytest_envs=
for env in ${envs//,/ }; do
    if [ "$env" = pep8 ]; then
        if "$bootstrap/bin/tox" -e pep8; then style=passed; else
            style=failed
            status=1
        fi
    else
        pytest_envs=${pytest_envs:+$pytest_envs,}$env
    fi
done
if [ -n "$pytest_envs" ]; then
    "$bootstrap/bin/tox" -e "$pytest_envs" -- --junitxml="$report" ||
        status=$?
fi

# One closing line that any CI reads: "N passed, N failed". The style
# checks count as one test; a test run that produced no report as one
# failure.
"$python" - "$report" "$style" "$pytest_envs" <<'PY'
import os
import sys
import xml.etree.ElementTree as ET

report, style, pytest_envs = sys.argv[1:4]
passed = failed = skipped = 0
if os.path.exists(report):
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == 'testsuite' else list(root)
    total = sum(int(s.get('tests', 0)) for s in suites)
    failed = sum(int(s.get('failures', 0)) + int(s.get('errors', 0))
                 for s in suites)
    skipped = sum(int(s.get('skipped', 0)) for s in suites)
    passed = total - failed - skipped
elif pytest_envs:
    failed += 1
if style == 'passed':
    passed += 1
elif style == 'failed':
    failed += 1
print('%d passed, %d failed, %d skipped' % (passed, failed, skipped))
PY
exit "$status"
