"""Schemathesis hooks for tests/contract/schemathesis.sh.

Every generated `Idempotency-Key` becomes a fresh UUID: hypothesis draws short values ("0", "A")
again and again, and a key reused for another request answers 422 `idempotency_key_reused`
before the handler runs, which would keep the fuzzer away from the writes themselves. The
header's own rules (400 for a malformed key, 409, 422, replays) are tested in
tests/api/idempotency.rs.
"""

import uuid

import schemathesis


@schemathesis.hook
def map_headers(ctx, headers):
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    return headers
