"""Schemathesis hooks for omoi's OpenAPI run (tests/openapi_fuzz.rs).

The fuzzer acts as the owner of an organization, with the owner's access token (a person:
it may create organizations and everything in them, so that the stateful phase follows a
creation to what it created). The fuzzer is free to call every route and learns ids from
responses; the one way it could end that session is logging out with it, so logout is
sent with an owner's API key instead (refused: API keys are revoked, not logged out), and
that key is minted again whenever the fuzzer revokes it. Logging out itself is tested in
tests/auth.rs.
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
