#!/usr/bin/env bash
# Make sure a MariaDB server runs for the tests, with oslo.db's
# "opportunistic" test account.
#
# Installs Debian's mariadb-server package when it is missing, starts the
# server without systemd when it is not running (the package's init script,
# or mysqld_safe), and creates the user "openstack_citest" (password
# "openstack_citest", allowed to create and drop databases, from the loopback
# addresses only) and its database "openstack_citest", so that the tests and
# oslo.db's test fixtures find them on 127.0.0.1:3306.  It does nothing
# (quickly) when all that is already there, and may be run again at will.
set -euo pipefail

PACKAGE=mariadb-server
CITEST=openstack_citest
HOSTS=(localhost 127.0.0.1 ::1)
LOGFILE=/var/log/nova-error-notifier-mariadb.log

log() {
    printf 'ensure-mariadb: %s\n' "$*" >&2
}

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        log "$1, and this script is not running as root."
        log "Run it as root (or with sudo): $0"
        exit 1
    fi
}

find_server() {
    local candidate
    for candidate in /usr/sbin/mariadbd /usr/sbin/mysqld; do
        if [[ -x $candidate ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# First of the given programs that exists (newer names first).
find_tool() {
    local candidate
    for candidate in "$@"; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

server_alive() {
    # "ping" succeeds whenever the server answers, even if it refuses the
    # account; it never asks for a password.
    "$ADMIN" --no-defaults --protocol=tcp --host=127.0.0.1 --port=3306 \
        --user=ping --connect-timeout=2 ping >/dev/null 2>&1 ||
        "$ADMIN" ping >/dev/null 2>&1
}

citest_works() {
    MYSQL_PWD=$CITEST "$CLIENT" --no-defaults --protocol=tcp \
        --host=127.0.0.1 --port=3306 --user=$CITEST \
        --connect-timeout=5 --batch --skip-column-names \
        -e 'SELECT 1' "$CITEST" >/dev/null 2>&1
}

install_package() {
    need_root "$PACKAGE is not installed"
    if ! command -v apt-get >/dev/null 2>&1; then
        log "$PACKAGE is not installed and apt-get is not available;" \
            "install MariaDB or MySQL by hand"
        exit 1
    fi
    # The server is started below, the way this script knows; ask
    # invoke-rc.d not to start it during the install.
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

start_server() {
    need_root "MariaDB is not running"
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    if [[ -x /etc/init.d/mariadb ]]; then
        log "starting MariaDB with /etc/init.d/mariadb"
        /etc/init.d/mariadb start >>"$LOGFILE" 2>&1 || true
    fi
    if ! server_alive; then
        local safe
        safe=$(find_tool mariadbd-safe mysqld_safe) || {
            log "cannot start MariaDB: no mysqld_safe"
            exit 1
        }
        log "starting MariaDB with $safe (log: $LOGFILE)"
        # Detached, with no inherited descriptors: whoever reads this
        # script's output is not kept waiting by the server.
        setsid "$safe" </dev/null >>"$LOGFILE" 2>&1 &
    fi
    local waited=0
    until server_alive; do
        if ((waited >= 60)); then
            log "MariaDB did not answer within 60 s; last lines of" \
                "$LOGFILE and the server's error log:"
            tail -n 20 "$LOGFILE" >&2 || true
            tail -n 20 /var/log/mysql/error.log >&2 2>/dev/null || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "MariaDB is up"
}

create_citest() {
    need_root "the $CITEST account is missing"
    log "creating the $CITEST user and database"
    local sql='' host
    for host in "${HOSTS[@]}"; do
        sql+="CREATE USER IF NOT EXISTS '$CITEST'@'$host'"
        sql+=" IDENTIFIED BY '$CITEST';"
        sql+="ALTER USER '$CITEST'@'$host' IDENTIFIED BY '$CITEST';"
        sql+="GRANT ALL PRIVILEGES ON *.* TO '$CITEST'@'$host';"
    done
    sql+="CREATE DATABASE IF NOT EXISTS $CITEST CHARACTER SET utf8mb4;"
    sql+="FLUSH PRIVILEGES;"
    # As root over the socket (unix_socket authentication, Debian's default).
    "$CLIENT" --batch -e "$sql"
}

POLICY_ADDED=
cleanup() {
    if [[ -n $POLICY_ADDED ]]; then
        rm -f "$POLICY_ADDED"
    fi
}
trap cleanup EXIT

if ! server=$(find_server); then
    install_package
    if ! server=$(find_server); then
        log "apt-get finished but the MariaDB server is still not found"
        exit 1
    fi
fi
ADMIN=$(find_tool mariadb-admin mysqladmin) || {
    log "no mariadb-admin or mysqladmin: the client is missing"
    exit 1
}
CLIENT=$(find_tool mariadb mysql) || {
    log "no mariadb or mysql client"
    exit 1
}

if ! server_alive; then
    start_server
fi
if ! citest_works; then
    create_citest
    if ! citest_works; then
        log "the $CITEST account still cannot log in on 127.0.0.1:3306"
        exit 1
    fi
fi
log "MariaDB ready ($server): mysql+pymysql://$CITEST:$CITEST@127.0.0.1:3306/$CITEST"
