"""Ray Serve: a private local Ray instance, one replica at route "/"; embed uses
@serve.batch. max_ongoing_requests is raised to 64 so batches can fill."""

import argparse
import os
import signal
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")

import common  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

QUIET = {"enable_access_log": False, "log_level": "WARNING"}


@serve.deployment(num_replicas=1, max_ongoing_requests=64, logging_config=QUIET)
class Echo:
    async def __call__(self, request):
        return await request.json()


@serve.deployment(num_replicas=1, max_ongoing_requests=64, logging_config=QUIET)
class Embed:
    def __init__(self):
        self.model = common.load()

    @serve.batch(max_batch_size=common.MAX_BATCH, batch_wait_timeout_s=common.BATCH_WAIT_S)
    async def run(self, lists):
        flat = [s for x in lists for s in x]
        vectors = common.encode(self.model, flat).tolist()
        out, start = [], 0
        for x in lists:
            out.append(vectors[start:start + len(x)])
            start += len(x)
        return out

    async def __call__(self, request):
        body = await request.json()
        return {"embeddings": await self.run(body["sentences"])}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workload", required=True)
    a = ap.parse_args()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False,
             _temp_dir=tempfile.mkdtemp(prefix="nbray_", dir="/tmp"))
    serve.start(http_options={"host": "127.0.0.1", "port": a.port}, logging_config=QUIET)
    serve.run((Echo if a.workload == "echo" else Embed).bind(), name="bench", route_prefix="/")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(1)
