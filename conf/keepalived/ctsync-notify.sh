#!/bin/sh
# keepalived notify script for ctsyncd: what conntrackd's primary-backup.sh
# does, with paths that the environment may override and one log line per
# step. Install as /etc/ctsyncd/ctsync-notify.sh (mode 0755) and name it in
# keepalived.conf's vrrp_sync_group:
#
#   notify_master "/etc/ctsyncd/ctsync-notify.sh primary"
#   notify_backup "/etc/ctsyncd/ctsync-notify.sh backup"
#   notify_fault  "/etc/ctsyncd/ctsync-notify.sh fault"
#
# or as the group's generic `notify`, which keepalived calls as
# `ctsync-notify.sh GROUP G1 MASTER|BACKUP|FAULT|STOP PRIORITY`.
#
#   primary: commit the peers' flows into the kernel (-c), forget both
#            caches (-f), take the kernel table as ours (-R), send it (-B).
#   backup:  start the daemon if it is not running (a stale lock is
#            removed), flush our old flows from the kernel after
#            purge_timeout_s (-t; with warm standby the peers' mirrored
#            flows are kept), ask the primary for its table (-n).
#   fault:   -t, as above.
#   stop:    nothing (keepalived is stopping; the daemon keeps running).
#
# Transitions are serialised with flock(1) when it is available, so a
# backup transition that arrives during a commit waits for it.

CTSYNCD_BIN=${CTSYNCD_BIN:-/usr/sbin/ctsyncd}
CTSYNCD_CONFIG=${CTSYNCD_CONFIG:-/etc/ctsyncd/ctsyncd.toml}
CTSYNCD_LOCK=${CTSYNCD_LOCK:-/var/lock/ctsyncd.lock}
CTSYNCD_NOTIFY_LOCK=${CTSYNCD_NOTIFY_LOCK:-/run/ctsync-notify.lock}

log() {
    if command -v logger >/dev/null 2>&1; then
        logger -t ctsync-notify -- "$*"
    fi
    echo "ctsync-notify: $*" >&2
}

ctl() {
    "$CTSYNCD_BIN" -C "$CTSYNCD_CONFIG" "$@"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        log "ERROR: ctsyncd $* failed (exit $rc)"
    fi
    return "$rc"
}

state=$1
# keepalived's generic notify: TYPE NAME STATE PRIORITY.
case "$1" in
    GROUP|INSTANCE) state=$3 ;;
esac
case "$state" in
    MASTER|master) state=primary ;;
    BACKUP) state=backup ;;
    FAULT) state=fault ;;
    STOP) state=stop ;;
esac

if command -v flock >/dev/null 2>&1 && [ -d "$(dirname "$CTSYNCD_NOTIFY_LOCK")" ]; then
    exec 9>"$CTSYNCD_NOTIFY_LOCK"
    flock 9
fi

case "$state" in
    primary)
        log "becoming primary"
        ctl -c
        ctl -f
        ctl -R
        ctl -B
        ;;
    backup)
        log "becoming backup"
        if ! "$CTSYNCD_BIN" -C "$CTSYNCD_CONFIG" -s >/dev/null 2>&1; then
            if [ -f "$CTSYNCD_LOCK" ]; then
                log "WARNING: ctsyncd was not stopped cleanly; removing $CTSYNCD_LOCK"
                rm -f "$CTSYNCD_LOCK"
            fi
            # The daemon must not inherit the transition lock (fd 9), or
            # every later transition would wait for it forever.
            if ! ctl -d 9>&-; then
                log "ERROR: cannot start ctsyncd"
                exit 1
            fi
        fi
        ctl -t
        ctl -n
        ;;
    fault)
        log "fault"
        ctl -t
        ;;
    stop)
        log "keepalived stopping"
        ;;
    *)
        echo "usage: ctsync-notify.sh primary|backup|fault|stop" >&2
        echo "       ctsync-notify.sh GROUP|INSTANCE NAME MASTER|BACKUP|FAULT|STOP [PRIORITY]" >&2
        exit 1
        ;;
esac
exit 0
