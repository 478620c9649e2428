#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: style checks, unit tests,
# the conformance test over the shared Nova corpus and the functional tests
# against a real RabbitMQ (installed with apt-get when missing).
#
# Usage: tools/run-tests.sh [tox environments, default "pep8,all"]
set -euo pipefail

cd "$(dirname "$0")/.."
envs=${1:-pep8,all}

./tools/ensure-rabbitmq.sh

python=${PYTHON:-python3}
bootstrap=.tox/.bootstrap
if [ ! -x "$bootstrap/bin/tox" ]; then
    echo "Installing tox into $bootstrap"
    "$python" -m venv "$bootstrap"
    "$bootstrap/bin/pip" install --quiet --upgrade pip
    "$bootstrap/bin/pip" install --quiet 'tox>=4'
fi

report=.tox/junit.xml
rm -f "$report"
status=0
"$bootstrap/bin/tox" -e "$envs" -- --junitxml="$report" || status=$?

# One closing line that any CI reads: "N passed, N failed".
if [ -f "$report" ]; then
    "$python" - "$report" <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == 'testsuite' else list(root)
total = sum(int(s.get('tests', 0)) for s in suites)
failed = sum(int(s.get('failures', 0)) + int(s.get('errors', 0))
             for s in suites)
skipped = sum(int(s.get('skipped', 0)) for s in suites)
print('%d passed, %d failed, %d skipped' % (total - failed - skipped,
                                           failed, skipped))
PY
fi
exit "$status"
