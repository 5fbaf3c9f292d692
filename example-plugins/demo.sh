#!/usr/bin/env bash
# The plughost demo, on the embedded default store in a fresh data directory:
# builds the example plug-ins and the host, starts `plughost serve`, registers
# the plug-ins, creates a user with an API key, raises data events with the CLI (as
# the administrator) and with curl (as that user), and shows what the synchronous
# plug-ins changed or rejected (and a recorded run replayed), what each user may see, the system jobs the async
# step queued, a workflow run waiting for a record to change and finishing when it
# does, a small email campaign delivered to a local SMTP server, and the audit log.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing the wasm32-wasip2 target and building (first run: several minutes)"
rustup target add wasm32-wasip2 >/dev/null
(cd example-plugins/rust && cargo build --release --locked --quiet)
cargo build --locked --quiet -p plughost
PH="$PWD/target/debug/plughost"
WASM="$PWD/example-plugins/rust/target/wasm32-wasip2/release"

export PLUGHOST_DATA_DIR="${PLUGHOST_DATA_DIR:-$(mktemp -d)}"
step "A local SMTP server for the campaign: aiosmtpd (Debian's python3-aiosmtpd) writing a maildir"
if ! /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q python3-aiosmtpd >/dev/null
fi
SMTP_PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MAILDIR="$PLUGHOST_DATA_DIR/maildir"
/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" -c aiosmtpd.handlers.Mailbox "$MAILDIR" &
SMTP=$!
echo "listening on 127.0.0.1:$SMTP_PORT, delivering to $MAILDIR"

step "Starting plughost serve with no workers of its own but the outgoing mail (data in $PLUGHOST_DATA_DIR)"
PLUGHOST_WORKERS=0 PLUGHOST_MAIL_SMTP="smtp://127.0.0.1:$SMTP_PORT" PLUGHOST_MAIL_FROM="Contoso <news@contoso.example>" \
  "$PH" serve --listen 127.0.0.1:0 &
SERVER=$!
WORKER=
trap 'kill -TERM $WORKER $SERVER $SMTP 2>/dev/null || true; wait $WORKER $SERVER $SMTP 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f "$PLUGHOST_DATA_DIR/server.json" ] && break; sleep 0.1; done
URL=$(sed -E 's/.*"url":"([^"]+)".*/\1/' "$PLUGHOST_DATA_DIR/server.json")

step "Starting the asynchronous service in its own process: plughost worker (it could run on another machine)"
"$PH" --data-dir "$PLUGHOST_DATA_DIR/worker" worker --server "$URL" \
  --token-file "$PLUGHOST_DATA_DIR/worker-token" --name demo-worker &
WORKER=$!
for _ in $(seq 100); do "$PH" workers list | grep -q demo-worker && break; sleep 0.1; done
"$PH" workers list

step "Defining the entities"
"$PH" entities define account --attr name:text --attr accountnumber:text --attr creditlimit:money
"$PH" entities define task --attr subject:text --attr regardingobjectid:reference --attr scheduledend:datetime

step "Registering the example plug-ins"
"$PH" register "$WASM/account_number.wasm" --name account-number --step Create:account:pre-operation
"$PH" register "$WASM/follow_up_task.wasm" --name follow-up-task --step Create:account:post-operation:async
"$PH" steps list
# The account-number step records its next runs, for replay (the Plug-in Profiler).
STEP=$("$PH" steps list --json | /usr/bin/python3 -c 'import json, sys; print(next(s["id"] for s in json.load(sys.stdin) if s["plugin"] == "account-number"))')
"$PH" steps profile "$STEP" --runs 5

step "A user with the basic-user role and an API key (printed once; only its hash is stored)"
"$PH" users create ann --role basic-user
KEY=$("$PH" keys create --user ann --label demo | head -1)
"$PH" keys list
"$PH" --key "$KEY" whoami

step "Creating accounts: the pre-operation plug-in fills the account number"
"$PH" entities create account --set name=Contoso --set 'creditlimit={"money":"25000.00"}'
curl -sS -X POST "$URL/api/v1/entities/account" -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' -d '{"name": "Fabrikam"}'
echo

step "A bad account is rejected by the plug-in, and nothing is stored"
"$PH" entities create account --set name= || true
curl -sS -X POST "$URL/api/v1/entities/account" -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' -d '{"name": "Litware", "creditlimit": {"money": "-5"}}'
echo

step "The step recorded its runs, the rejected ones too: one replays offline against a build, showing what differs"
"$PH" runs list --step "$STEP"
RUN=$("$PH" runs list --step "$STEP" --json | /usr/bin/python3 -c 'import json, sys; print(next(r["id"] for r in json.load(sys.stdin) if r["outcome"] != "succeeded"))')
"$PH" runs export "$RUN" > "$PLUGHOST_DATA_DIR/run.json"
echo "exported to $PLUGHOST_DATA_DIR/run.json; replayed with the same build (plughost replay FILE --with NEW.wasm):"
"$PH" replay "$PLUGHOST_DATA_DIR/run.json" --with "$WASM/account_number.wasm" || true

step "Ann sees only the account she owns; a call without a key, or on another's record, is refused"
curl -sS "$URL/api/v1/entities/account?columns=name,accountnumber" -H "Authorization: Bearer $KEY"
echo
curl -sS "$URL/api/v1/entities/account"
echo
CONTOSO=$("$PH" entities query account --json | grep -o '"id": *"[^"]*"' | head -1 | sed -E 's/.*"([^"]+)"$/\1/')
curl -sS -X DELETE "$URL/api/v1/entities/account/$CONTOSO" -H "Authorization: Bearer $KEY"
echo

step "A bulk import: each CSV row goes through the pipeline; the bad one is reported, not stored"
printf 'name,creditlimit\nAdventure Works,1000\nLitware,-5\nNorthwind,250.50\n' > "$PLUGHOST_DATA_DIR/accounts.csv"
IMPORT=$("$PH" bulk import "$PLUGHOST_DATA_DIR/accounts.csv" --entity account | awk '{print $3}')
for _ in $(seq 50); do "$PH" jobs show "$IMPORT" | grep -q 'Succeeded' && break; sleep 0.1; done
"$PH" jobs show "$IMPORT"

step "The accounts as stored"
"$PH" entities query account --order name

step "The remote worker ran the system jobs the async step queued (one per account); the Deletion Service waits for its next hour"
for _ in $(seq 50); do
  "$PH" jobs list --status WaitingForResources --json | grep -q '"id"' || break
  sleep 0.1
done
"$PH" jobs list
"$PH" service status

step "The follow-up tasks the async plug-in created, committed with its job's completion"
"$PH" entities query task

step "The remote worker that ran them"
"$PH" workers list

step "A workflow: the support-case example (example-plugins/workflows/support-case.json)"
"$PH" entities define incident --attr title:text --attr priority:text --attr statecode:option \
  --attr statuscode:option --attr customeremail:text --attr resolution:text
"$PH" entities define email --attr to:text --attr subject:text --attr body:text --attr regardingobjectid:reference
"$PH" register "$WASM/probe.wasm" --name probe
"$PH" workflows create example-plugins/workflows/support-case.json --activate >/dev/null
"$PH" workflows list
CASE=$("$PH" entities create incident --set title='Printer jam' --set priority=high \
  --set customeremail=pat@example.com | awk '{print $2}')
for _ in $(seq 100); do
  RUN=$("$PH" jobs list --entity incident --json | grep -o '"id": *"[^"]*"' | head -1 | sed -E 's/.*"([^"]+)"$/\1/')
  [ -n "$RUN" ] && "$PH" jobs show "$RUN" | grep -q 'Waiting (10)' && break
  sleep 0.1
done
echo "the run created a task for the high-priority case and waits until the case is resolved (or 2 days pass):"
"$PH" workflows log "$RUN"
"$PH" entities query task --where "subject:like:%Printer%"

step "Resolving the case wakes the run, in the same transaction: a mail, a plug-in activity, an update"
"$PH" entities update incident "$CASE" --set 'statecode={"option": 1}' --set resolution='Replaced the drum'
for _ in $(seq 100); do "$PH" jobs show "$RUN" | grep -q 'Succeeded (30)' && break; sleep 0.1; done
"$PH" jobs show "$RUN"
"$PH" entities query email
"$PH" entities get incident "$CASE"

step "A small campaign: one email activity to two lists, delivered over SMTP"
"$PH" entities define contact --attr fullname:text --attr emailaddress1:text --attr donotemail:boolean
for who in "Pat Lee:pat@example.com:false" "Sam Roe:sam@example.com:false" "Kim Ito:kim@example.com:true" "Lou Park::false"; do
  IFS=: read -r name address optout <<<"$who"
  "$PH" entities create contact --set "fullname=$name" ${address:+--set "emailaddress1=$address"} \
    --set "donotemail=$optout" >/dev/null
done
contact() { "$PH" entities query contact --where "fullname:eq:$1" --json | grep -o '"id": *"[^"]*"' | head -1 | sed -E 's/.*"([^"]+)"$/\1/'; }
ref() { printf '{"reference": {"logical_name": "%s", "id": "%s"}}' "$1" "$2"; }
new_id() { awk '{print $2}'; }
CUSTOMERS=$("$PH" entities create list --set name=Customers --set membertype=contact | new_id)
PROSPECTS=$("$PH" entities create list --set name=Prospects --set membertype=contact | new_id)
for member in "$CUSTOMERS:Pat Lee" "$CUSTOMERS:Sam Roe" "$PROSPECTS:Sam Roe" "$PROSPECTS:Kim Ito" "$PROSPECTS:Lou Park"; do
  "$PH" entities create listmember --set "listid=$(ref list "${member%%:*}")" \
    --set "entityid=$(ref contact "$(contact "${member#*:}")")" >/dev/null
done
CAMPAIGN=$("$PH" entities create campaign --set name='Spring launch' | new_id)
ACTIVITY=$("$PH" entities create campaignactivity --set "campaignid=$(ref campaign "$CAMPAIGN")" --set channel=email \
  --set 'subject=Spring is here, {{fullname}}' --set 'body=Dear {{fullname}}, our spring range is out.' | new_id)
for list in "$CUSTOMERS" "$PROSPECTS"; do
  "$PH" entities create campaignactivityitem --set "campaignactivityid=$(ref campaignactivity "$ACTIVITY")" \
    --set "listid=$(ref list "$list")" >/dev/null
done
"$PH" campaigns distribute "$ACTIVITY" --wait
echo "one log row per member (Sam is on both lists: once; Kim opted out; Lou has no address):"
"$PH" entities query bulkoperationlog --columns outcome,error
for _ in $(seq 100); do [ "$(find "$MAILDIR/new" -type f 2>/dev/null | wc -l)" -ge 2 ] && break; sleep 0.1; done
"$PH" entities query email --columns to,subject,statuscode,messageid
echo "delivered to the SMTP server: $(find "$MAILDIR/new" -type f | wc -l) messages in $MAILDIR/new"

step "The dashboard at $URL/ui (log in with an API key), and the API's OpenAPI document"
COOKIES="$PLUGHOST_DATA_DIR/dashboard-cookies"
curl -s -o /dev/null -c "$COOKIES" --data-urlencode "key=$(cat "$PLUGHOST_DATA_DIR/admin-token")" "$URL/ui/login"
echo "the overview's counts of plug-in jobs by status (the page itself is HTML):"
curl -s -b "$COOKIES" "$URL/ui/overview" | grep -o 'data-cell="plugin_execution:[A-Za-z]*">[0-9]*' \
  | sed -E 's/data-cell="plugin_execution:([A-Za-z]+)">([0-9]+)/  \1: \2/'
echo "operations described at $URL/api/v1/openapi.json: $(curl -s "$URL/api/v1/openapi.json" | grep -o '"operationId"' | wc -l)"
echo "(the demo's server stops below; run plughost serve and open $URL/ui in a browser to look around)"

step "The audit log: every administrative action, who did it and how it ended"
"$PH" audit list

step "Stopping the worker and the server (SIGTERM)"
kill -TERM $WORKER
wait $WORKER || true
kill -TERM $SERVER
wait $SERVER || true
kill -TERM $SMTP
wait $SMTP || true
trap - EXIT
echo "done: the data stays in $PLUGHOST_DATA_DIR"
