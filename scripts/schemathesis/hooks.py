"""Schemathesis hooks for omoi's OpenAPI run (tests/e2e/openapi_fuzz.rs).

The fuzzer acts as the owner of an organization, with the owner's access token (a person:
it may create organizations and everything in them, so that the stateful phase follows a
creation to what it created). The fuzzer is free to call every route and learns ids from
responses; the one way it could end that session is logging out with it, so logout is
sent with an owner's API key instead (refused: API keys are revoked, not logged out), and
that key is minted again whenever the fuzzer revokes it. Logging out itself is tested in
tests/e2e/auth.rs.
"""

import json
import os
import urllib.request

import schemathesis

BASE_URL = os.environ["OMOI_FUZZ_BASE_URL"]
ACCESS_TOKEN = os.environ["OMOI_FUZZ_ACCESS_TOKEN"]
ORGANIZATION_ID = os.environ["OMOI_FUZZ_ORGANIZATION_ID"]
LOGOUT = {"method": "POST", "path": "/api/v1/auth/logout"}


def bearer(case, credential):
    case.headers = case.headers or {}
    case.headers["Authorization"] = f"Bearer {credential}"


@schemathesis.auth(refresh_interval=3600).skip_for(**LOGOUT)
class OwnerSession:
    """The owner's access token, valid for the whole run."""

    def get(self, case, context):
        return ACCESS_TOKEN

    def set(self, case, data, context):
        bearer(case, data)


@schemathesis.auth(refresh_interval=3600).apply_to(**LOGOUT)
class OwnerApiKey:
    """An owner's API key of the fuzzed organization, minted again once it is revoked."""

    def get(self, case, context):
        body = json.dumps(
            {"organization_id": ORGANIZATION_ID, "name": "fuzz", "role": "owner"}
        ).encode()
        request = urllib.request.Request(
            f"{BASE_URL}/api/v1/auth/api-keys",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {ACCESS_TOKEN}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["key"]

    def set(self, case, data, context):
        bearer(case, data)


# The longest wait a claim may ask for (the route refuses more with a 422).
CLAIM_WAIT_BOUND = 60
# The wait of a claim that names none.
CLAIM_WAIT_DEFAULT = 30


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """A claim that would wait for work (`wait_seconds` from 1 to the bound, or left out
    or null: 30) is sent with 0: the fuzzer's agent has none ready, so every such claim
    waited out its whole wait — the coverage phase's boundary values alone (60, 59, 30 s)
    took 150 s of a 210 s run. An integral number written as a fraction (`5.0`) is the same wait
    (the server takes it as the integer it is): those 14 claims alone waited 385 s of a
    474 s run. Values the route refuses are sent as drawn. The long poll is tested in
    tests/e2e/claims.rs."""
    if not case.path.endswith("/claim") or not isinstance(case.body, dict):
        return
    wait = case.body.get("wait_seconds")
    if wait is None:
        # Left out or null: the default wait.
        wait = CLAIM_WAIT_DEFAULT
    if is_integral(wait) and 0 < wait <= CLAIM_WAIT_BOUND:
        case.body["wait_seconds"] = 0


def is_integral(value):
    """A JSON number that is a whole number, however written (`5`, `5.0`); not a bool."""
    if type(value) is int:
        return True
    return type(value) is float and value.is_integer()
