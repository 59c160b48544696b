"""A control plane killed with ``kill -9`` loses no usage: requests it answered just
before, and a request it was relaying when it died (counted from the replica), are
billed once by the control plane started after it on the same database (both databases;
``neocloud up`` in a process, a real serving runtime replica).

Found: the gateway's usage records waited in memory for the next flush (up to one
reconcile interval) and were lost with the process; a request cut by the kill was never
counted, although the replica kept its count.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from neocloud import Client
from neocloud.server.db.engine import Database
from tests.e2e.cloudproc import CloudProcess
from tests.server.usage_helpers import billed_tokens
from tests.waiting import wait_for

METERED = textwrap.dedent('''
    import threading
    import time
    from pathlib import Path

    from neocloud.serving import Request, Service, endpoint

    class Metered(Service):
        """Counts each request under its meter id, as the built-in engines do."""

        def setup(self):
            self.counts = {}
            self.lock = threading.Lock()

        def usage(self, meter_id):
            with self.lock:
                found = self.counts.get(meter_id)
                return dict(found) if found else None

        @endpoint
        def gen(self, request: Request, words: int = 1, hold_s: float = 0.0,
                mark: str = "") -> dict:
            mid = request.header("x-neocloud-meter-id") or ""
            with self.lock:
                self.counts[mid] = {"prompt_tokens": 2, "completion_tokens": 0,
                                    "finished": False}
            if mark:
                Path(mark).write_text(mid)
            time.sleep(hold_s)
            with self.lock:
                self.counts[mid] = {"prompt_tokens": 2, "completion_tokens": words,
                                    "finished": True}
            return {"text": "w " * words,
                    "usage": {"prompt_tokens": 2, "completion_tokens": words}}
''')


@pytest.mark.slow
def test_usage_of_a_killed_control_plane_is_billed_once_after_its_restart(
        tmp_path: Path, db_url: str) -> None:
    service = tmp_path / "metered.py"
    service.write_text(METERED)
    cloud = CloudProcess(tmp_path / "home", db_url=db_url).start()
    db = Database(db_url)
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        sdk.deployments.create("m", f"{service}:Metered", replicas=1)
        dep = sdk.deployments.wait_ready("m", timeout_s=120).id
        h = {"Authorization": f"Bearer {cloud.token}"}
        url = f"{cloud.url}/endpoints/m/gen"
        # a request in flight when the control plane dies: the replica finishes it
        mark = tmp_path / "started"
        cut: list[object] = []

        def in_flight() -> None:
            try:
                cut.append(httpx.post(url, headers=h, timeout=30, json={
                    "words": 7, "hold_s": 3.0, "mark": str(mark)}).status_code)
            except httpx.HTTPError as exc:
                cut.append(exc)

        t = threading.Thread(target=in_flight)
        t.start()
        wait_for(mark.exists, "the replica to start the request", 30)
        with httpx.Client(headers=h, timeout=30) as http:
            for words in range(1, 6):
                r = http.post(url, json={"words": words})
                assert r.status_code == 200, r.text
        cloud.kill()  # kill -9, right after the fifth answer, and mid-request
        t.join(30)
        assert cut and not isinstance(cut[0], int)  # the client's request was cut

        cloud.start()
        want = (2 * 6, 1 + 2 + 3 + 4 + 5 + 7, 5, 1)  # the cut one: billed, failed
        deadline = time.monotonic() + 120  # PostgreSQL: the rows' owner must go stale
        while (got := billed_tokens(db, dep)) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert got == want  # (prompt, completion, served, failed)
        time.sleep(2.0)  # several more flushes
        assert billed_tokens(db, dep) == want  # once
    finally:
        cloud.stop()
        db.dispose()
