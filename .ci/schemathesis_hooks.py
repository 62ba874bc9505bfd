"""Schemathesis hooks for keyhost.

- Webhook deliveries are signed as their senders would sign them: a webhook request whose
  signature header schemathesis drew in the documented form gets the real signature of the exact
  bytes it is about to send (X-Keyhost-Signature under KEYHOST_KYC_WEBHOOK_SECRET,
  Idenfy-Signature under KEYHOST_IDENFY_SIGNING_KEY), so that its body reaches keyhost's
  validation and the issuance behind it. A missing or malformed header is left alone: keyhost
  must refuse it (401).
- No body holds a float that is a whole number beyond 64 bits (1e300): keyhost refuses
  integers beyond 64 bits (the API description bounds them) but accepts such a float, since it
  arrives exactly as written; JSON Schema cannot tell the two apart, so the run does not send
  what the description cannot classify.
- The API client the run authenticates with (KEYHOST_API_KEY, khc_<id>_<secret>) is never
  disabled by the run (the stateful phase finds its id in GET /admin/clients): disabling it is
  asked of a client that does not exist instead. Nor is the bootstrap admin token the run
  authenticates with (POST /admin/admins/bootstrap/disable, once the run has created a named
  operator): that is asked of an admin that does not exist.
"""

import hashlib
import hmac
import os
import re
import time

import schemathesis
from requests.compat import json as requests_json

KYC_PATH = "/webhooks/kyc-complete"
IDENFY_PATH = "/webhooks/idenfy"
KYC_HEADER = re.compile(r"^t=[0-9]{1,12},sha256=[0-9a-fA-F]{64}$")
IDENFY_HEADER = re.compile(r"^[0-9a-fA-F]{64}$")
DISABLE_PATH = "/admin/clients/{id}/disable"
ADMIN_DISABLE_PATH = "/admin/admins/{name}/disable"
OWN_CLIENT_ID = os.environ["KEYHOST_API_KEY"].split("_")[1]


def _has_wide_whole_float(value):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item.is_integer() and not -(2**63) <= item <= 2**64 - 1:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@schemathesis.hook
def filter_body(context, body):
    return not _has_wide_whole_float(body)


def _body_bytes(case):
    """The bytes the transport will send, serialised the way it serialises them."""
    kwargs = case.as_transport_kwargs()
    if "data" in kwargs:
        data = kwargs["data"]
        return data if isinstance(data, bytes) else str(data).encode()
    if "json" in kwargs:
        body = requests_json.dumps(kwargs["json"], allow_nan=False)
        return body if isinstance(body, bytes) else body.encode()
    return b""


def _header(case, name):
    for key, value in (case.headers or {}).items():
        if key.lower() == name.lower():
            return key, value
    return None, None


def _mac(secret, message):
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    if path == KYC_PATH:
        key, value = _header(case, "X-Keyhost-Signature")
        if key is None or not isinstance(value, str) or not KYC_HEADER.match(value):
            return
        t = str(int(time.time()))
        mac = _mac(os.environ["KEYHOST_KYC_WEBHOOK_SECRET"], t.encode() + b"." + _body_bytes(case))
        case.headers[key] = f"t={t},sha256={mac}"
    elif path == DISABLE_PATH:
        if (case.path_parameters or {}).get("id") == OWN_CLIENT_ID:
            case.path_parameters["id"] = "not-the-run-s-own-client"
    elif path == ADMIN_DISABLE_PATH:
        if (case.path_parameters or {}).get("name") == "bootstrap":
            case.path_parameters["name"] = "not-the-run-s-bootstrap"
    elif path == IDENFY_PATH:
        key, value = _header(case, "Idenfy-Signature")
        if key is None or not isinstance(value, str) or not IDENFY_HEADER.match(value):
            return
        case.headers[key] = _mac(os.environ["KEYHOST_IDENFY_SIGNING_KEY"], _body_bytes(case))
