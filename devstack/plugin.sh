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
# - ``stack post-config``: make Nova emit notifications, write
#   ``$NOVA_ERROR_NOTIFIER_CONF``
# - ``stack extra``: start the service
# - ``unstack``: stop it
# - ``clean``: remove its configuration and state

# Save trace setting
_XTRACE_NOVA_ERROR_NOTIFIER=$(set +o | grep xtrace)
set -o xtrace


# Functions
# ---------

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
    local conf
    local url
    local confs=()

    # stack.sh runs configure_neutron_nova in the background during
    # post-config, and it edits nova.conf and nova-cpu.conf too: two
    # ``iniset`` on one file at once can lose either's change.
    if declare -F async_wait >/dev/null; then
        async_wait configure_neutron_nova
    fi

    url=$(_nova_error_notifier_notification_url)
    mapfile -t confs < <(_nova_error_notifier_nova_confs)
    for conf in "${confs[@]}"; do
        iniset "$conf" oslo_messaging_notifications driver messagingv2
        # A cell conductor's own transport_url names the cell's virtual
        # host: without a notification URL, its notifications would stay
        # there, out of the service's sight.
        if [[ -n "$url" && -z "$(iniget "$conf" oslo_messaging_notifications transport_url)" ]]; then
            iniset "$conf" oslo_messaging_notifications transport_url "$url"
        fi
        iniset "$conf" notifications notification_format "$NOVA_ERROR_NOTIFIER_NOTIFICATION_FORMAT"
        # instance.update notifications into ERROR
        iniset "$conf" notifications notify_on_state_change vm_and_task_state
    done
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

# configure_nova_error_notifier - write $NOVA_ERROR_NOTIFIER_CONF and create
# the state directory
function configure_nova_error_notifier {
    local conf=$NOVA_ERROR_NOTIFIER_CONF
    local url
    local receivers=log

    sudo install -d -o "$STACK_USER" -m 755 "$NOVA_ERROR_NOTIFIER_CONF_DIR"
    sudo install -d -o "$STACK_USER" -m 750 "$NOVA_ERROR_NOTIFIER_STATE_DIR"

    # Anew at each stack.sh: nothing left over from an earlier run (an
    # e-mail receiver since switched off, say)
    rm -f "$conf"
    _nova_error_notifier_sample_conf "$conf"
    # It holds the broker's and the service user's passwords
    chmod 640 "$conf"

    iniset "$conf" DEFAULT debug "$ENABLE_DEBUG_LOG_LEVEL"
    iniset_rpc_backend nova-error-notifier "$conf" DEFAULT
    url=$(_nova_error_notifier_notification_url)
    if [[ -n "$url" ]]; then
        iniset "$conf" oslo_messaging_notifications transport_url "$url"
    fi
    iniset "$conf" DEFAULT region_name "$REGION_NAME"
    iniset "$conf" listener pool "$NOVA_ERROR_NOTIFIER_POOL"
    iniset "$conf" delivery state_dir "$NOVA_ERROR_NOTIFIER_STATE_DIR"

    # One rule: every error, to the log (and by e-mail when an SMTP server
    # is given)
    iniset "$conf" DEFAULT rules default
    iniset "$conf" rule:default events "*"
    iniset "$conf" receiver:log driver log
    if [[ -n "$NOVA_ERROR_NOTIFIER_SMTP_HOST" ]]; then
        receivers="log, email"
        iniset "$conf" receiver:email driver email
        iniset "$conf" receiver:email to "$NOVA_ERROR_NOTIFIER_EMAIL_TO"
        iniset "$conf" receiver:email staff_users "$NOVA_ERROR_NOTIFIER_EMAIL_STAFF_USERS"
        iniset "$conf" email smtp_host "$NOVA_ERROR_NOTIFIER_SMTP_HOST"
        if [[ -n "$NOVA_ERROR_NOTIFIER_SMTP_PORT" ]]; then
            iniset "$conf" email smtp_port "$NOVA_ERROR_NOTIFIER_SMTP_PORT"
        fi
        iniset "$conf" email from_address "$NOVA_ERROR_NOTIFIER_EMAIL_FROM"
    fi
    iniset "$conf" rule:default receivers "$receivers"

    # Keystone, for the staff users
    iniset "$conf" service_credentials auth_type password
    iniset "$conf" service_credentials auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$conf" service_credentials username "$NOVA_ERROR_NOTIFIER_SERVICE_USER"
    iniset "$conf" service_credentials password "$SERVICE_PASSWORD"
    iniset "$conf" service_credentials project_name "$SERVICE_PROJECT_NAME"
    iniset "$conf" service_credentials user_domain_name "$SERVICE_DOMAIN_NAME"
    iniset "$conf" service_credentials project_domain_name "$SERVICE_DOMAIN_NAME"

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
    if is_service_enabled nova-error-notifier; then
        echo_summary "Starting nova-error-notifier"
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
