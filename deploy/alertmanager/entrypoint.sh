#!/bin/sh
# Start Alertmanager with deploy/alertmanager/alertmanager.yml, rendered from the environment:
#   PAGERDUTY_INTEGRATION_KEY  set → the `page` receiver also pages PagerDuty (Events API v2)
#   SLACK_WEBHOOK_URL          set → the `chat` receiver also posts to Slack
#   LLMPULSE_BUSINESS_TZ       time zone of business hours (default UTC), e.g. Europe/Berlin
#   LLMPULSE_ALERT_WEBHOOK_URL base URL of the webhook receiver (default http://alert-log:8080)
# Secrets are written to files readable only by this user and referenced with *_file
# options, so they never appear in the rendered config or in Alertmanager's /api/v2/status.
#
#   entrypoint.sh [alertmanager flags...]   render, check with amtool, exec alertmanager
#   entrypoint.sh --render-only             render and print the config path (tests use it)
# AM_TEMPLATE and AM_RUN_DIR override where the template is read and the result written.
set -euf  # -f: no globbing ($enable below holds sed patterns)

TEMPLATE="${AM_TEMPLATE:-/etc/llmpulse/alertmanager/alertmanager.yml}"
RUN_DIR="${AM_RUN_DIR:-/tmp/llmpulse-alertmanager}"
CONFIG="$RUN_DIR/alertmanager.yml"

# Escape a value for the replacement side of sed s|...|...|.
sed_escape() { printf '%s' "$1" | sed -e 's/[|&\\]/\\&/g'; }

umask 077
mkdir -p "$RUN_DIR"
rm -f "$RUN_DIR/pagerduty_integration_key" "$RUN_DIR/slack_webhook_url"

tz="${LLMPULSE_BUSINESS_TZ:-UTC}"
webhook="${LLMPULSE_ALERT_WEBHOOK_URL:-http://alert-log:8080}"
webhook="${webhook%/}"
enable=""
if [ -n "${PAGERDUTY_INTEGRATION_KEY:-}" ]; then
    printf '%s' "$PAGERDUTY_INTEGRATION_KEY" > "$RUN_DIR/pagerduty_integration_key"
    enable="$enable -e s/^\\([[:space:]]*\\)#pagerduty[[:space:]]/\\1/"
fi
if [ -n "${SLACK_WEBHOOK_URL:-}" ]; then
    printf '%s' "$SLACK_WEBHOOK_URL" > "$RUN_DIR/slack_webhook_url"
    enable="$enable -e s/^\\([[:space:]]*\\)#slack[[:space:]]/\\1/"
fi

# shellcheck disable=SC2086  # $enable is a list of sed arguments without spaces inside
sed $enable \
    -e "s|@RUN_DIR@|$(sed_escape "$RUN_DIR")|g" \
    -e "s|^\\([[:space:]]*location:\\) UTC\$|\\1 $(sed_escape "$tz")|" \
    -e "s|http://alert-log:8080|$(sed_escape "$webhook")|g" \
    "$TEMPLATE" > "$CONFIG"

echo "llmpulse alertmanager: pagerduty $([ -n "${PAGERDUTY_INTEGRATION_KEY:-}" ] && echo on || echo off)," \
     "slack $([ -n "${SLACK_WEBHOOK_URL:-}" ] && echo on || echo off), business hours in $tz," \
     "webhook $webhook" >&2

if [ "${1:-}" = "--render-only" ]; then
    echo "$CONFIG"
    exit 0
fi

AMTOOL="$(command -v amtool || true)"
if [ -n "$AMTOOL" ] && ! "$AMTOOL" check-config "$CONFIG" >&2; then
    echo "llmpulse alertmanager: the rendered config is invalid (see above); check LLMPULSE_BUSINESS_TZ" >&2
    exit 1
fi

exec /bin/alertmanager --config.file="$CONFIG" --storage.path=/alertmanager "$@"
