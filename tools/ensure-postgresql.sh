#!/usr/bin/env bash
# Make sure a PostgreSQL server runs for the tests, with oslo.db's
# "opportunistic" test account.
#
# Installs Debian's postgresql package when it is missing, creates a cluster
# if the package made none, starts it without systemd (pg_ctlcluster) when it
# is down, and creates the role "openstack_citest" (password
# "openstack_citest", allowed to create databases) and its database
# "openstack_citest", so that the tests and oslo.db's test fixtures find them
# on 127.0.0.1:5432.  It does nothing (quickly) when all that is already
# there, and may be run again at will.
set -euo pipefail

PACKAGE=postgresql
CITEST=openstack_citest
PORT=5432

log() {
    printf 'ensure-postgresql: %s\n' "$*" >&2
}

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        log "$1, and this script is not running as root."
        log "Run it as root (or with sudo): $0"
        exit 1
    fi
}

installed() {
    command -v pg_ctlcluster >/dev/null 2>&1 &&
        compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# "version name status" of the cluster on $PORT, else of the first one.
cluster() {
    pg_lsclusters -h 2>/dev/null | awk -v port="$PORT" '
        $3 == port { print $1, $2, $4; found = 1; exit }
        NR == 1 { first = $1 " " $2 " " $4 }
        END { if (!found && first != "") print first }'
}

citest_works() {
    PGPASSWORD=$CITEST PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 \
        -p "$PORT" -U $CITEST -d $CITEST -tAc 'SELECT 1' >/dev/null 2>&1
}

as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

install_package() {
    need_root "$PACKAGE is not installed"
    if ! command -v apt-get >/dev/null 2>&1; then
        log "$PACKAGE is not installed and apt-get is not available;" \
            "install PostgreSQL by hand"
        exit 1
    fi
    # The cluster is started below; ask invoke-rc.d not to start it during
    # the install.
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        POLICY_ADDED=$policy
    fi
    log "installing $PACKAGE with apt-get"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$PACKAGE"
}

create_citest() {
    need_root "the $CITEST role is missing"
    log "creating the $CITEST role and database"
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$CITEST') THEN
        CREATE ROLE $CITEST LOGIN CREATEDB PASSWORD '$CITEST';
    ELSE
        ALTER ROLE $CITEST LOGIN CREATEDB PASSWORD '$CITEST';
    END IF;
END
\$\$;
SQL
    if [[ -z $(as_postgres psql -X -p "$PORT" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$CITEST'") ]]; then
        as_postgres createdb -p "$PORT" -O $CITEST -E UTF8 -T template0 \
            $CITEST
    fi
}

POLICY_ADDED=
cleanup() {
    if [[ -n $POLICY_ADDED ]]; then
        rm -f "$POLICY_ADDED"
    fi
}
trap cleanup EXIT

if ! installed; then
    install_package
    if ! installed; then
        log "apt-get finished but PostgreSQL is still not found"
        exit 1
    fi
fi

read -r version name status <<<"$(cluster)" || true
if [[ -z ${version:-} ]]; then
    need_root "PostgreSQL has no cluster"
    version=$(basename "$(compgen -G '/usr/lib/postgresql/*/bin/postgres' |
        sort -V | tail -n 1 | xargs dirname | xargs dirname)")
    name=main
    log "creating the PostgreSQL $version cluster $name on port $PORT"
    pg_createcluster --port "$PORT" "$version" "$name" >/dev/null
    status=down
fi
if [[ $status != online ]]; then
    need_root "PostgreSQL $version/$name is not running"
    log "starting PostgreSQL $version/$name"
    # pg_ctlcluster waits until the server accepts connections; its
    # output is the server's, not ours: keep it off our stdout.
    pg_ctlcluster "$version" "$name" start >&2
fi
PORT=$(pg_lsclusters -h | awk -v v="$version" -v n="$name" \
    '$1 == v && $2 == n { print $3 }')
if ! citest_works; then
    create_citest
    if ! citest_works; then
        log "the $CITEST role still cannot log in on 127.0.0.1:$PORT"
        exit 1
    fi
fi
log "PostgreSQL $version ready:" \
    "postgresql+psycopg2://$CITEST:$CITEST@127.0.0.1:$PORT/$CITEST"
