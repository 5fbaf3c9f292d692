"""A real SMTP server on 127.0.0.1 for plughost's tests (Debian python3-aiosmtpd).

usage: sink.py PORT OUTFILE [MODE]
MODE: comma-separated: ok (default) | greylist (each Message-ID refused once with
      451, then taken) | reject:TEXT (recipients containing TEXT refused with 550)
Every message taken is appended to OUTFILE as one JSON line (flushed and fsynced
before the 250 reply). Prints "ready" once listening.
"""
import json
import os
import sys
import time
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller

port, out = int(sys.argv[1]), sys.argv[2]
modes = (sys.argv[3] if len(sys.argv) > 3 else "ok").split(",")
rejected = [m[len("reject:"):] for m in modes if m.startswith("reject:")]
seen = set()


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if any(r in address for r in rejected):
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.content, policy=policy.default)
        mid = msg.get("Message-ID", "")
        if "greylist" in modes and mid not in seen:
            seen.add(mid)
            return "451 4.7.1 greylisted, try again later"
        body = msg.get_body(("plain",))
        row = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "message_id": mid,
            "subject": msg.get("Subject", ""),
            "body": body.get_content() if body is not None else "",
            "at": time.time(),
        }
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return "250 OK queued"


controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    pass
finally:
    controller.stop()
