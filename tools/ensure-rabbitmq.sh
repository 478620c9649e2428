#!/usr/bin/env bash
# Make sure a RabbitMQ server is installed for the functional tests.
#
# The tests start their own private broker (random ports, own epmd, temporary
# data directory), so all this script does is install Debian's rabbitmq-server
# package when it is missing, and make sure the system service that the
# package starts is not left running.  It does nothing (quickly) when RabbitMQ
# is already installed, and never touches an already installed system broker.
set -euo pipefail

PACKAGE=rabbitmq-server

log() {
    printf 'ensure-rabbitmq: %s\n' "$*" >&2
}

find_rabbitmq_server() {
    local candidate
    if candidate=$(command -v rabbitmq-server 2>/dev/null); then
        printf '%s\n' "$candidate"
        return 0
    fi
    local -a candidates=(
        /usr/sbin/rabbitmq-server
        /usr/local/sbin/rabbitmq-server
        /usr/lib/rabbitmq/bin/rabbitmq-server
    )
    for candidate in "${candidates[@]}"; do
        if [[ -x $candidate ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

system_broker_running() {
    # The packaged service runs beam.smp as the "rabbitmq" user.  Do not use
    # "service rabbitmq-server status" or rabbitmqctl to find out: without a
    # running node they leave an epmd daemon behind on port 4369.
    command -v pgrep >/dev/null 2>&1 || return 1
    pgrep -u rabbitmq -f 'beam' >/dev/null 2>&1
}

stop_system_broker() {
    if ! system_broker_running; then
        return 0
    fi
    log "stopping the system $PACKAGE service started by the package"
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl stop rabbitmq-server >/dev/null 2>&1 || true
        systemctl disable rabbitmq-server >/dev/null 2>&1 || true
    fi
    if system_broker_running; then
        service rabbitmq-server stop >/dev/null 2>&1 || true
    fi
    if system_broker_running; then
        rabbitmqctl stop >/dev/null 2>&1 || true
    fi
    # The service's epmd (port 4369) is harmless to the tests; "epmd -kill"
    # only stops it when no node is registered with it any more.
    if command -v epmd >/dev/null 2>&1; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    if system_broker_running; then
        log "warning: the system $PACKAGE service is still running;" \
            "the tests do not need it and do not use its ports"
    fi
}

if path=$(find_rabbitmq_server); then
    log "$PACKAGE already installed: $path"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    log "$PACKAGE is not installed and this script is not running as root."
    log "Install it with: sudo apt-get update &&" \
        "sudo apt-get install -y $PACKAGE   (or run this script as root)"
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "$PACKAGE is not installed and apt-get is not available;" \
        "install RabbitMQ (rabbitmq-server, rabbitmqctl, epmd) by hand"
    exit 1
fi

# Ask invoke-rc.d not to start the service during the install (the standard
# Debian mechanism); stop_system_broker below catches it if it starts anyway.
POLICY=/usr/sbin/policy-rc.d
policy_added=
cleanup() {
    if [[ -n $policy_added ]]; then
        rm -f "$POLICY"
    fi
}
trap cleanup EXIT
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    policy_added=1
fi

log "installing $PACKAGE with apt-get"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y "$PACKAGE"

stop_system_broker

if ! path=$(find_rabbitmq_server); then
    log "apt-get finished but rabbitmq-server is still not found"
    exit 1
fi
log "$PACKAGE installed: $path"
