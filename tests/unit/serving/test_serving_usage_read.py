"""The replica's usage answer (``GET /usage``) read beside a running engine thread: a count
answered as finished is final."""

from __future__ import annotations

from typing import Any

from neocloud.serving.builtin.chat import ChatService
from neocloud.serving.settings import ServingSettings


class _Racing:
    """A usage record whose engine thread, right after the first field is read, counts the
    request's last token and marks it finished (the interleaving that lost a token)."""

    def __init__(self) -> None:
        self.prompt_tokens = 5
        self._completion = 9
        self._finished = False
        self._raced = False

    def _race(self) -> None:
        if not self._raced:
            self._raced = True
            self._completion += 1
            self._finished = True

    @property
    def completion_tokens(self) -> int:
        value = self._completion
        self._race()
        return value

    @property
    def finished(self) -> bool:
        value = self._finished
        self._race()
        return value


class _Gen:
    def __init__(self, record: _Racing) -> None:
        self.record = record

    def usage(self, _rid: str) -> Any:
        return self.record


def test_a_finished_answer_carries_the_final_count() -> None:
    # read counts-then-finished, this gave {"completion_tokens": 9, "finished": True}
    # for a request that generated 10 tokens: the gateway billed one token less
    svc = ChatService(ServingSettings.from_env({}))
    record = _Racing()
    svc.generator = _Gen(record)  # type: ignore[assignment]
    answers = [svc.usage("m") for _ in range(3)]
    assert answers[-1] == {"prompt_tokens": 5, "completion_tokens": 10, "finished": True}
    assert all(a["completion_tokens"] == 10 for a in answers if a and a["finished"])
