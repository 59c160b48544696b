"""BentoML (1.4 service API), one worker. EchoSvc: POST /echo; EmbedSvc: POST /embed with
BentoML's adaptive batching (batchable=True). Run: bentoml serve bentoml_app:EchoSvc."""

import bentoml
import common

QUIET = {"access": {"enabled": False}}


@bentoml.service(workers=1, logging=QUIET)
class EchoSvc:
    @bentoml.api
    async def echo(self, sentences: list[str]) -> dict:
        return {"sentences": sentences}


@bentoml.service(workers=1, logging=QUIET)
class EmbedSvc:
    def __init__(self):
        self.model = common.load()

    @bentoml.api(batchable=True, max_batch_size=common.MAX_BATCH)
    def embed(self, sentences: list[str]) -> list[list[float]]:
        return common.encode(self.model, sentences).tolist()
