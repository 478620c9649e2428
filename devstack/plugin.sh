#!/bin/bash
#
# devstack/plugin.sh - DevStack plugin of nova-error-notifier
#
# Enabled in ``local.conf`` with::
#
#     enable_plugin nova-error-notifier <git url> [branch]
#
# DevStack sources this file with the phase as arguments:
#
# - ``stack pre-install``: check the clone
# - ``stack install``: install the package (``setup_develop``)
# - ``stack post-config``: make Nova emit notifications, create the
#   service's database (when DevStack runs MySQL or PostgreSQL), write
#   ``$NOVA_ERROR_NOTIFIER_CONF``
# - ``stack extra``: ``db sync`` (MySQL, PostgreSQL), start the service
# - ``unstack``: stop it
# - ``clean``: remove its configuration and state

# Save trace setting
_XTRACE_NOVA_ERROR_NOTIFIER=$(set +o | grep xtrace)
set -o xtrace


# Functions
# ---------

# _nova_error_notifier_iniset file section option value - set ``option`` of
# ``[section]`` in ``file`` to ``value``, where DevStack's ``iniset`` would
# put it (the option's line replaced, else added right below the section's
# header, the section appended when missing), with the value taken
# literally: DevStack's ``iniset`` runs its value through an unquoted
# ``echo``, which turns ``*`` into the names of the files of the current
# directory, squeezes runs of blanks and takes ``-n`` or ``-e`` for its own
# options. The value is written so that oslo.config reads exactly it:
# ``$`` as ``\$`` (no interpolation), in double quotes when it starts or
# ends with a blank, a quote or a non-ASCII character. It is not traced: it
# may be a password.
function _nova_error_notifier_iniset {
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    local LC_ALL=C
    local file=$1
    local section=$2
    local option=$3
    local value=$4
    local ends
    local tmp

    if [[ -z "$file" || -z "$section" || -z "$option" ]]; then
        die $LINENO "_nova_error_notifier_iniset: file, section and option needed"
    fi
    if [[ "$value" == *[$'\n\r']* ]]; then
        die $LINENO "[$section] $option of $file: the value holds a line break"
    fi
    value=${value//'$'/'\$'}
    ends=${value:0:1}${value: -1}
    if [[ -n "$value" && ( "$ends" == *[^[:graph:]]* || "$ends" == *[\"\']* ) ]]; then
        value="\"$value\""
    fi
    if [[ ! -e "$file" ]]; then
        touch "$file"
    fi
    tmp=$(mktemp "$file.XXXXXX")
    _NOVA_ERROR_NOTIFIER_SECTION=$section \
        _NOVA_ERROR_NOTIFIER_OPTION=$option \
        _NOVA_ERROR_NOTIFIER_VALUE=$value \
        awk '
            function is_header(l) {
                return substr(l, 1, 1) == "[" && index(substr(l, 2), "]") > 0
            }
            function is_option(l) {
                return substr(l, 1, length(option)) == option &&
                    substr(l, length(option) + 1) ~ /^[ \t]*=/
            }
            BEGIN {
                header = "[" ENVIRON["_NOVA_ERROR_NOTIFIER_SECTION"] "]"
                option = ENVIRON["_NOVA_ERROR_NOTIFIER_OPTION"]
                value = ENVIRON["_NOVA_ERROR_NOTIFIER_VALUE"]
            }
            { line[NR] = $0 }
            END {
                inside = 0
                replaced = 0
                nheaders = 0
                for (i = 1; i <= NR; i++) {
                    if (inside && is_header(line[i])) {
                        inside = 0
                    } else if (substr(line[i], 1, length(header)) == header) {
                        inside = 1
                        headers[i] = 1
                        nheaders++
                    } else if (inside && is_option(line[i])) {
                        match(substr(line[i], length(option) + 1), /^[ \t]*=[ \t]*/)
                        line[i] = substr(line[i], 1, length(option) + RLENGTH) value
                        replaced = 1
                    }
                }
                for (i = 1; i <= NR; i++) {
                    print line[i]
                    if (!replaced && (i in headers)) {
                        print option " = " value
                    }
                }
                if (!replaced && nheaders == 0) {
                    print ""
                    print header
                    print option " = " value
                }
            }' "$file" >"$tmp"
    # In place: the file keeps its owner and mode
    cat "$tmp" >"$file"
    rm -f "$tmp"
    $xtrace
}

# _nova_error_notifier_notification_url - the URL of the bus Nova sends its
# notifications to, and the service listens to (empty if DevStack does not
# know one)
function _nova_error_notifier_notification_url {
    if declare -F get_notification_url >/dev/null; then
        get_notification_url
    elif declare -F get_transport_url >/dev/null; then
        get_transport_url
    fi
}

# _nova_error_notifier_nova_confs - the Nova configuration files of this
# node, one a line: nova.conf, plus those of the conductors and computes
# that DevStack has written already
function _nova_error_notifier_nova_confs {
    local candidates=("$NOVA_CONF" "${NOVA_COND_CONF:-}" "${NOVA_CPU_CONF:-}")
    local conf
    local i
    local -A seen=()

    # Superconductor mode: one conductor configuration file per cell
    if declare -F conductor_conf >/dev/null; then
        for i in $(seq 1 "${NOVA_NUM_CELLS:-1}"); do
            candidates+=("$(conductor_conf "$i")")
        done
    fi
    for conf in "${candidates[@]}"; do
        if [[ -z "$conf" || -n "${seen[$conf]:-}" ]]; then
            continue
        fi
        seen[$conf]=1
        # A file lib/nova has not written (a service not on this node) is
        # not created here; one it writes later from nova.conf (as older
        # DevStacks do for nova-cpu.conf) inherits these settings.
        if [[ "$conf" == "$NOVA_CONF" || -f "$conf" ]]; then
            echo "$conf"
        fi
    done
}

# configure_nova_for_nova_error_notifier - make every Nova service of this
# node send its notifications to the bus
function configure_nova_for_nova_error_notifier {
    local xtrace
    local conf
    local url
    local confs=()

    # stack.sh runs configure_neutron_nova in the background during
    # post-config, and it edits nova.conf and nova-cpu.conf too: two
    # writers of one file at once can lose either's change.
    if declare -F async_wait >/dev/null; then
        async_wait configure_neutron_nova
    fi

    # The URL holds the broker's password: not traced
    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    url=$(_nova_error_notifier_notification_url)
    mapfile -t confs < <(_nova_error_notifier_nova_confs)
    for conf in "${confs[@]}"; do
        echo "Making the Nova services of $conf send notifications"
        _nova_error_notifier_iniset "$conf" oslo_messaging_notifications driver messagingv2
        # A cell conductor's own transport_url names the cell's virtual
        # host: without a notification URL, its notifications would stay
        # there, out of the service's sight.
        if [[ -n "$url" && -z "$(iniget "$conf" oslo_messaging_notifications transport_url)" ]]; then
            _nova_error_notifier_iniset "$conf" oslo_messaging_notifications transport_url "$url"
        fi
        _nova_error_notifier_iniset "$conf" notifications notification_format "$NOVA_ERROR_NOTIFIER_NOTIFICATION_FORMAT"
        # instance.update notifications into ERROR
        _nova_error_notifier_iniset "$conf" notifications notify_on_state_change vm_and_task_state
    done
    $xtrace
}

# check_nova_error_notifier_source - the clone made by enable_plugin is
# there
function check_nova_error_notifier_source {
    if [[ ! -f "$NOVA_ERROR_NOTIFIER_DIR/setup.cfg" ]]; then
        die $LINENO "nova-error-notifier is not in $NOVA_ERROR_NOTIFIER_DIR (set NOVA_ERROR_NOTIFIER_DIR)"
    fi
}

# install_nova_error_notifier - install the package and its dependencies
function install_nova_error_notifier {
    setup_develop "$NOVA_ERROR_NOTIFIER_DIR"
}

# _nova_error_notifier_sample_conf - write the sample configuration to $1:
# generated anew, else the one committed in the repository
function _nova_error_notifier_sample_conf {
    local conf=$1
    local etc=$NOVA_ERROR_NOTIFIER_DIR/etc/nova_error_notifier

    if "$NOVA_ERROR_NOTIFIER_BIN_DIR/oslo-config-generator" \
            --config-file "$etc/nova_error_notifier-config-generator.conf" \
            --output-file "$conf"; then
        return 0
    fi
    warn $LINENO "oslo-config-generator failed: starting from the committed sample configuration"
    cp "$etc/nova_error_notifier.conf.sample" "$conf"
}

# _nova_error_notifier_uses_database - whether the service keeps its
# outbox in DevStack's database server (MySQL or PostgreSQL enabled on this
# node and NOVA_ERROR_NOTIFIER_USE_DATABASE true), rather than in a SQLite
# file in its state directory
function _nova_error_notifier_uses_database {
    [[ "$NOVA_ERROR_NOTIFIER_USE_DATABASE" == "True" ]] && is_service_enabled mysql postgresql
}

# _nova_error_notifier_secrets - write the options that hold a password
# into $NOVA_ERROR_NOTIFIER_CONF: the broker's URLs, the database (created
# anew when DevStack runs MySQL or PostgreSQL) and the Keystone user's
# password. Nothing of it is traced: DevStack's functions put the passwords
# on their command lines.
function _nova_error_notifier_secrets {
    local xtrace
    local conf=$NOVA_ERROR_NOTIFIER_CONF
    local db=$NOVA_ERROR_NOTIFIER_DATABASE_NAME
    local url

    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    # DevStack's iniset_rpc_backend writes the broker's options (heartbeats
    # and all); the URL is then written again literally, iniset's echo
    # would mangle a password with a glob character or blanks.
    iniset_rpc_backend nova-error-notifier "$conf" DEFAULT
    url=
    if declare -F get_transport_url >/dev/null; then
        url=$(get_transport_url)
    fi
    if [[ -n "$url" ]]; then
        _nova_error_notifier_iniset "$conf" DEFAULT transport_url "$url"
    fi
    url=$(_nova_error_notifier_notification_url)
    if [[ -n "$url" ]]; then
        _nova_error_notifier_iniset "$conf" oslo_messaging_notifications transport_url "$url"
    fi

    if _nova_error_notifier_uses_database; then
        # The name goes into SQL statements unquoted
        if [[ ! "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
            die $LINENO "NOVA_ERROR_NOTIFIER_DATABASE_NAME must be letters, digits and underscores"
        fi
        echo "Creating the database $db of nova-error-notifier"
        recreate_database "$db"
        url=$(database_connection_url "$db")
        # DevStack installs psycopg2 for PostgreSQL, SQLAlchemy's default
        # driver for postgresql:// since 2.1 is psycopg (3): name it
        if [[ "$url" == postgresql://* ]]; then
            url=postgresql+psycopg2://${url#postgresql://}
        fi
        _nova_error_notifier_iniset "$conf" database connection "$url"
    fi

    _nova_error_notifier_iniset "$conf" service_credentials password "$SERVICE_PASSWORD"
    $xtrace
}

# init_nova_error_notifier - bring the service's database to the newest
# schema, when it has one: the plugin's ([database] connection to
# DevStack's server) or one set in local.conf. The default SQLite file is
# brought there by the service itself.
function init_nova_error_notifier {
    local xtrace
    local connection

    # The URL holds the database's password: not traced
    xtrace=$(set +o | grep xtrace)
    set +o xtrace
    connection=$(iniget "$NOVA_ERROR_NOTIFIER_CONF" database connection)
    $xtrace
    if [[ -n "${connection:+set}" ]]; then
        "$NOVA_ERROR_NOTIFIER_BIN_DIR/nova-error-notifier-manage" \
            --config-file "$NOVA_ERROR_NOTIFIER_CONF" db sync
    fi
}

# configure_nova_error_notifier - write $NOVA_ERROR_NOTIFIER_CONF, create
# the state directory and, on DevStack's database server, the database
function configure_nova_error_notifier {
    local conf=$NOVA_ERROR_NOTIFIER_CONF
    local receivers=log

    sudo install -d -o "$STACK_USER" -m 755 "$NOVA_ERROR_NOTIFIER_CONF_DIR"
    # 0700: the service refuses (or tightens) an outbox directory others
    # can read
    sudo install -d -o "$STACK_USER" -m 700 "$NOVA_ERROR_NOTIFIER_STATE_DIR"

    # Anew at each stack.sh: nothing left over from an earlier run (an
    # e-mail receiver since switched off, say)
    rm -f "$conf"
    _nova_error_notifier_sample_conf "$conf"
    # It holds the broker's, the database's and the service user's
    # passwords
    chmod 640 "$conf"

    # Every value goes through _nova_error_notifier_iniset, not iniset:
    # iniset's unquoted echo would make "*" the names of the files of
    # stack.sh's directory.
    _nova_error_notifier_iniset "$conf" DEFAULT debug "$ENABLE_DEBUG_LOG_LEVEL"
    _nova_error_notifier_secrets
    _nova_error_notifier_iniset "$conf" DEFAULT region_name "$REGION_NAME"
    _nova_error_notifier_iniset "$conf" listener pool "$NOVA_ERROR_NOTIFIER_POOL"
    # The SQLite outbox's directory (unused when [database] connection is
    # set)
    _nova_error_notifier_iniset "$conf" delivery state_dir "$NOVA_ERROR_NOTIFIER_STATE_DIR"

    # One rule: every error, to the log (and by e-mail when an SMTP server
    # is given)
    _nova_error_notifier_iniset "$conf" DEFAULT rules default
    _nova_error_notifier_iniset "$conf" rule:default events "*"
    _nova_error_notifier_iniset "$conf" receiver:log driver log
    if [[ -n "$NOVA_ERROR_NOTIFIER_SMTP_HOST" ]]; then
        receivers="log, email"
        _nova_error_notifier_iniset "$conf" receiver:email driver email
        _nova_error_notifier_iniset "$conf" receiver:email to "$NOVA_ERROR_NOTIFIER_EMAIL_TO"
        _nova_error_notifier_iniset "$conf" receiver:email staff_users "$NOVA_ERROR_NOTIFIER_EMAIL_STAFF_USERS"
        _nova_error_notifier_iniset "$conf" email smtp_host "$NOVA_ERROR_NOTIFIER_SMTP_HOST"
        if [[ -n "$NOVA_ERROR_NOTIFIER_SMTP_PORT" ]]; then
            _nova_error_notifier_iniset "$conf" email smtp_port "$NOVA_ERROR_NOTIFIER_SMTP_PORT"
        fi
        _nova_error_notifier_iniset "$conf" email from_address "$NOVA_ERROR_NOTIFIER_EMAIL_FROM"
    fi
    _nova_error_notifier_iniset "$conf" rule:default receivers "$receivers"

    # Keystone, for the staff users
    _nova_error_notifier_iniset "$conf" service_credentials auth_type password
    _nova_error_notifier_iniset "$conf" service_credentials auth_url "$KEYSTONE_SERVICE_URI"
    _nova_error_notifier_iniset "$conf" service_credentials username "$NOVA_ERROR_NOTIFIER_SERVICE_USER"
    _nova_error_notifier_iniset "$conf" service_credentials project_name "$SERVICE_PROJECT_NAME"
    _nova_error_notifier_iniset "$conf" service_credentials user_domain_name "$SERVICE_DOMAIN_NAME"
    _nova_error_notifier_iniset "$conf" service_credentials project_domain_name "$SERVICE_DOMAIN_NAME"

    setup_logging "$conf"
}

# start_nova_error_notifier - start the service
function start_nova_error_notifier {
    run_process nova-error-notifier "$NOVA_ERROR_NOTIFIER_BIN_DIR/nova-error-notifier --config-file $NOVA_ERROR_NOTIFIER_CONF"
}

# stop_nova_error_notifier - stop the service
function stop_nova_error_notifier {
    stop_process nova-error-notifier
}

# cleanup_nova_error_notifier - remove the configuration and the state (the
# outbox) of the service
function cleanup_nova_error_notifier {
    sudo rm -f "$NOVA_ERROR_NOTIFIER_CONF"
    sudo rm -rf "${NOVA_ERROR_NOTIFIER_CONF_DIR:?}" "${NOVA_ERROR_NOTIFIER_STATE_DIR:?}"
}


# Dispatcher
# ----------

if [[ "$1" == "stack" && "$2" == "pre-install" ]]; then
    if is_service_enabled nova-error-notifier; then
        check_nova_error_notifier_source
    fi

elif [[ "$1" == "stack" && "$2" == "install" ]]; then
    if is_service_enabled nova-error-notifier; then
        echo_summary "Installing nova-error-notifier"
        install_nova_error_notifier
    fi

elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
    # After lib/nova wrote its configuration files, before Nova starts
    if is_service_enabled nova; then
        echo_summary "Making Nova send the notifications of nova-error-notifier"
        configure_nova_for_nova_error_notifier
    fi
    if is_service_enabled nova-error-notifier; then
        echo_summary "Configuring nova-error-notifier"
        configure_nova_error_notifier
    fi

elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
    # After local.conf's [[post-config|...]] sections were merged into the
    # configuration file: db sync sees the [database] connection they set
    if is_service_enabled nova-error-notifier; then
        echo_summary "Initializing and starting nova-error-notifier"
        init_nova_error_notifier
        start_nova_error_notifier
    fi
fi

if [[ "$1" == "unstack" ]]; then
    if is_service_enabled nova-error-notifier; then
        stop_nova_error_notifier
    fi
fi

if [[ "$1" == "clean" ]]; then
    if is_service_enabled nova-error-notifier; then
        cleanup_nova_error_notifier
    fi
fi

# Restore xtrace
$_XTRACE_NOVA_ERROR_NOTIFIER

# Tell emacs to use shell-script-mode
## Local variables:
## mode: shell-script
## End:
