#!/bin/bash
#
# tests/unit/devstack_functions.sh - DevStack's functions that the plugin
# (devstack/plugin.sh, settings, override-defaults) calls, for its tests
#
# Written for these tests to behave as DevStack's own do (inc/ini-config,
# functions-common, functions, inc/python, lib/rpc_backend, lib/database,
# lib/databases/*), quirks included:
#
# - ``iniset`` passes its value through an unquoted ``echo``: a glob is
#   expanded in the current directory, blanks are squeezed, ``-n`` or
#   ``-e`` is taken as echo's option; ``iniget`` echoes what it read
#   unquoted too. The file edits themselves are done by devstack_ini.py.
# - ``is_service_enabled`` and ``enable_service``/``disable_service`` on
#   ``ENABLED_SERVICES``/``DISABLED_SERVICES``, with the ``nova``/``n-*``
#   style groups.
# - ``recreate_database`` and ``database_connection_url`` for the
#   ``DATABASE_TYPE`` that the enabled service (mysql or postgresql)
#   selects, running the same client commands (``mysql``, ``psql``,
#   ``createdb``: whatever is first in ``PATH``).
# - ``run_process`` and ``stop_process`` with DevStack's checks of the
#   command, a unit file under ``$DEVSTACK_STANDIN_ROOT/systemd``.
#
# Every call of a function of DevStack is recorded in $DEVSTACK_STANDIN_LOG,
# one line, its arguments separated by tabs. ``sudo`` runs its command
# itself, refusing any absolute path outside $DEVSTACK_STANDIN_ROOT.

function _standin_record {
    local IFS=$'\t'
    echo "$*" >>"$DEVSTACK_STANDIN_LOG"
}

function _standin_ini {
    "$DEVSTACK_STANDIN_PYTHON" "$DEVSTACK_STANDIN_DIR/devstack_ini.py" "$@"
}

# inc/ini-config
# --------------

function iniset {
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    local sudo=""
    if [[ "${1:-}" == "-sudo" ]]; then
        sudo="sudo"
        shift
    fi
    local file=$1
    local section=$2
    local option=$3
    local value=${4:-}

    _standin_record iniset "$file" "$section" "$option" "$value"
    # DevStack's quirk, on purpose: the value through an unquoted echo
    # shellcheck disable=SC2086,SC2116
    value=$(echo $value)
    if [[ -z "$section" || -z "$option" ]]; then
        $xtrace
        return
    fi
    $sudo "$DEVSTACK_STANDIN_PYTHON" "$DEVSTACK_STANDIN_DIR/devstack_ini.py" \
        set "$file" "$section" "$option" "$value"
    $xtrace
}

function iniget {
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    local line

    _standin_record iniget "$@"
    line=$(_standin_ini get "$1" "$2" "$3")
    # DevStack's quirk, on purpose: echoed unquoted
    # shellcheck disable=SC2086
    echo ${line#*=}
    $xtrace
}

function ini_has_option {
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    local rc=0
    if [[ "${1:-}" == "-sudo" ]]; then
        shift
    fi
    _standin_ini has "$1" "$2" "$3" || rc=$?
    $xtrace
    return $rc
}

function inicomment {
    if [[ "${1:-}" == "-sudo" ]]; then
        shift
    fi
    _standin_record inicomment "$@"
    _standin_ini comment "$1" "$2" "$3"
}

function inidelete {
    if [[ "${1:-}" == "-sudo" ]]; then
        shift
    fi
    _standin_record inidelete "$@"
    if [[ -z "${2:-}" || -z "${3:-}" ]]; then
        return
    fi
    _standin_ini delete "$1" "$2" "$3"
}

# functions-common
# ----------------

function die {
    local status=$?
    _standin_record die "$@"
    if [[ $status == 0 ]]; then
        status=1
    fi
    echo "[ERROR] ${BASH_SOURCE[1]}:$1 ${*:2}" >&2
    exit $status
}

function warn {
    # shellcheck disable=SC2319
    local status=$?
    _standin_record warn "$@"
    echo "[WARNING] ${BASH_SOURCE[1]}:$1 ${*:2}"
    return $status
}

function trueorfalse {
    local default=$1

    if [[ -z "${2:-}" ]]; then
        die $LINENO "variable to normalize required"
    fi
    case "${!2:-}" in
        1 | [yY]es | YES | [tT]rue | TRUE) echo True ;;
        0 | [nN]o | NO | [fF]alse | FALSE) echo False ;;
        *) echo "$default" ;;
    esac
}

# The groups DevStack knows: a service is on when one of its members is
function _standin_group_enabled {
    local service=$1
    local list=",${ENABLED_SERVICES:-}"
    local group
    local prefix
    for group in nova:n- glance:g- neutron:q- trove:tr- swift:s-; do
        prefix=${group#*:}
        if [[ "$service" == "${group%%:*}" && "$list" == *",$prefix"* ]]; then
            return 0
        fi
    done
    [[ "$service" == n-cpu-* && "$list" == *",n-cpu"* ]] && return 0
    [[ "$service" == s-* && "$list," == *",swift,"* ]] && return 0
    return 1
}

function is_service_enabled {
    local service
    local status=1
    # shellcheck disable=SC2068
    for service in $@; do
        if [[ ",${ENABLED_SERVICES:-}," == *",$service,"* ]]; then
            status=0
        fi
        if declare -F "is_${service}_enabled" >/dev/null && "is_${service}_enabled"; then
            status=0
        fi
        if _standin_group_enabled "$service"; then
            status=0
        fi
    done
    return $status
}

function _standin_service_list {
    local list=$1
    while [[ "$list" == *,,* ]]; do
        list=${list//,,/,}
    done
    list=${list#,}
    echo "${list%,}"
}

function enable_service {
    local service
    local services=${ENABLED_SERVICES:-}
    local kept=""
    local removed=","

    _standin_record enable_service "$@"
    # shellcheck disable=SC2068
    for service in $@; do
        if [[ ",${DISABLED_SERVICES:-}," == *",$service,"* ]]; then
            warn $LINENO "Attempt to enable_service $service when it has been disabled"
            continue
        fi
        if ! is_service_enabled "$service"; then
            services+=",$service"
        fi
    done
    # A "-name" in the list takes "name" out
    for service in ${services//,/ }; do
        if [[ "$service" == -* ]]; then
            removed+="${service#-},"
        fi
    done
    for service in ${services//,/ }; do
        if [[ "$service" != -* && "$removed" != *",$service,"* ]]; then
            kept+=",$service"
        fi
    done
    ENABLED_SERVICES=$(_standin_service_list "$kept")
}

function disable_service {
    local service
    local enabled=",${ENABLED_SERVICES:-},"

    _standin_record disable_service "$@"
    # shellcheck disable=SC2068
    for service in $@; do
        DISABLED_SERVICES+=",$service"
        enabled=${enabled//,$service,/,}
    done
    DISABLED_SERVICES=$(_standin_service_list "$DISABLED_SERVICES")
    ENABLED_SERVICES=$(_standin_service_list "$enabled")
}

function _standin_check_command {
    local command=$1
    if [[ "$command" =~ sudo ]]; then
        die $LINENO "run_process with sudo does not work under systemd"
    fi
    if [[ ! "$command" =~ ^/ ]]; then
        die $LINENO "The cmd=\"$command\" does not start with an absolute path"
    fi
}

function run_process {
    local service=$1
    local command=$2
    local unit=$DEVSTACK_STANDIN_ROOT/systemd/devstack@$service.service

    _standin_record run_process "$@"
    if is_service_enabled "$service"; then
        _standin_check_command "$command"
        mkdir -p "${unit%/*}"
        printf '[Service]\nUser=%s\nExecStart=%s\n' \
            "${4:-$STACK_USER}" "$command" >"$unit"
    fi
}

function stop_process {
    local service=$1
    local unit=$DEVSTACK_STANDIN_ROOT/systemd/devstack@$service.service

    _standin_record stop_process "$@"
    if is_service_enabled "$service" && [[ -f "$unit" ]]; then
        rm -f "$unit"
    fi
}

# stack.sh runs these in the background and waits for them
function async_wait {
    local name
    _standin_record async_wait "$@"
    for name in "$@"; do
        # What the background job had written by then, for the tests
        if [[ -f "${NOVA_CONF:-}" ]]; then
            cp "$NOVA_CONF" "$DEVSTACK_STANDIN_ROOT/nova.conf.at-$name"
        fi
    done
}

function sudo {
    local arg
    _standin_record sudo "$@"
    for arg in "${@:2}"; do
        if [[ "$arg" == /* && "$arg" != "$DEVSTACK_STANDIN_ROOT"/* ]]; then
            echo "stand-in sudo: $arg is outside $DEVSTACK_STANDIN_ROOT" >&2
            return 1
        fi
    done
    "$@"
}

# stack.sh, functions
# -------------------

function echo_summary {
    _standin_record echo_summary "$@"
    echo "$@"
}

function setup_logging {
    local conf=$1
    _standin_record setup_logging "$@"
    USE_JOURNAL=$(trueorfalse False USE_JOURNAL)
    if [[ "$USE_JOURNAL" == "True" ]]; then
        iniset "$conf" DEFAULT use_journal True
    fi
    iniset "$conf" DEFAULT logging_context_format_string "%(color)s%(levelname)s %(name)s [%(global_request_id)s %(request_id)s %(project_name)s %(user_name)s%(color)s] %(instance)s%(color)s%(message)s"
    iniset "$conf" DEFAULT logging_exception_prefix "ERROR %(name)s %(instance)s"
    iniset "$conf" DEFAULT log_color "${LOG_COLOR:-False}"
}

# inc/python
# ----------

function get_python_exec_prefix {
    if [[ "${GLOBAL_VENV:-True}" == "True" ]]; then
        echo "$DEVSTACK_VENV/bin"
    else
        echo /usr/local/bin
    fi
}

function setup_develop {
    _standin_record setup_develop "$@"
    if [[ ! -f "$1/setup.cfg" && ! -f "$1/setup.py" ]]; then
        die $LINENO "$1 is not a Python project"
    fi
}

# lib/rpc_backend
# ---------------

function _standin_rabbit_known {
    is_service_enabled rabbit || [[ -n "${RABBIT_HOST:-}" && -n "${RABBIT_PASSWORD:-}" ]]
}

function get_transport_url {
    if _standin_rabbit_known; then
        echo "rabbit://$RABBIT_USERID:$RABBIT_PASSWORD@$RABBIT_HOST:5672/${1:-}"
    fi
}

function get_notification_url {
    if _standin_rabbit_known; then
        echo "rabbit://$RABBIT_USERID:$RABBIT_PASSWORD@$RABBIT_HOST:5672/${1:-}"
    fi
}

function iniset_rpc_backend {
    local file=$2
    local section=${3:-DEFAULT}

    _standin_record iniset_rpc_backend "$@"
    if _standin_rabbit_known; then
        # As DevStack's: the URL unquoted
        # shellcheck disable=SC2046
        iniset "$file" "$section" transport_url $(get_transport_url "${4:-}")
        if [[ -n "${RABBIT_HEARTBEAT_TIMEOUT_THRESHOLD:-}" ]]; then
            iniset "$file" oslo_messaging_rabbit heartbeat_timeout_threshold "$RABBIT_HEARTBEAT_TIMEOUT_THRESHOLD"
        fi
    fi
}

# lib/nova
# --------

function conductor_conf {
    echo "$NOVA_CONF_DIR/nova_cell$1.conf"
}

# lib/database, lib/databases/mysql, lib/databases/postgresql
# -----------------------------------------------------------

DATABASE_TYPE=""
for _standin_db in mysql postgresql; do
    if is_service_enabled $_standin_db; then
        DATABASE_TYPE=$_standin_db
    fi
done
unset _standin_db
MYSQL_HOST=${MYSQL_HOST:-${SERVICE_LOCAL_HOST:-127.0.0.1}}
DATABASE_HOST=${DATABASE_HOST:-$MYSQL_HOST}
DATABASE_USER=${DATABASE_USER:-${MYSQL_USER:-root}}
DATABASE_PASSWORD=${DATABASE_PASSWORD:-}
MYSQL_DRIVER=${MYSQL_DRIVER:-PyMySQL}

function _standin_database_scheme {
    case "$DATABASE_TYPE" in
        mysql)
            if [[ "$MYSQL_DRIVER" == "PyMySQL" ]]; then
                echo mysql+pymysql
            else
                echo mysql
            fi
            ;;
        postgresql) echo postgresql ;;
        *) die $LINENO "no database service enabled" ;;
    esac
}

function recreate_database {
    local db=$1
    _standin_record recreate_database "$@"
    case "$DATABASE_TYPE" in
        mysql)
            mysql -u"$DATABASE_USER" -p"$DATABASE_PASSWORD" -h"$MYSQL_HOST" -e "DROP DATABASE IF EXISTS $db;"
            mysql -u"$DATABASE_USER" -p"$DATABASE_PASSWORD" -h"$MYSQL_HOST" -e "CREATE DATABASE $db CHARACTER SET utf8;"
            ;;
        postgresql)
            psql -h"$DATABASE_HOST" -U"$DATABASE_USER" -dtemplate1 -c "DROP DATABASE IF EXISTS $db"
            createdb -h "$DATABASE_HOST" -U"$DATABASE_USER" -l C -T template0 -E utf8 "$db"
            ;;
        *) die $LINENO "no database service enabled" ;;
    esac
}

function database_connection_url {
    local db=$1
    local base
    local extra=""

    _standin_record database_connection_url "$@"
    base=${BASE_SQL_CONN:-$(_standin_database_scheme)://$DATABASE_USER:$DATABASE_PASSWORD@$DATABASE_HOST}
    case "$DATABASE_TYPE" in
        mysql)
            if [[ "${MYSQL_GATHER_PERFORMANCE:-}" == "True" ]]; then
                extra="&plugin=dbcounter"
            fi
            echo "$base/$db?charset=utf8$extra"
            ;;
        postgresql) echo "$base/$db?client_encoding=utf8" ;;
    esac
}
