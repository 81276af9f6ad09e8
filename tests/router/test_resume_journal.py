"""The router's journal of a stream: kept as bytes, decoded into a continuation only when
a cut needs one."""

from __future__ import annotations

import pytest

from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.config import ResumeConfig
from services.router.resume import GENERATE, Journal, open_journal

REQUEST = pb.GenerateRequest(model="m", sampling=pb.SamplingParams(max_tokens=9, n=2))


def message(ids: list[int], *, finish: int = 0, usage: bool = False) -> bytes:
    response = pb.GenerateResponse(
        choices=[
            pb.ChoiceDelta(index=i, token_ids=ids, num_tokens=len(ids), finish_reason=finish)
            for i in (0, 1)
        ]
    )
    if usage:
        response.usage.completion_tokens = 1
    return response.SerializeToString()


def test_continuation_carries_every_relayed_token_per_choice() -> None:
    journal = Journal(REQUEST.SerializeToString(), cap=1 << 20)
    for chunk in (message([1, 2]), message([3]), message([4], finish=pb.FINISH_REASON_STOP)):
        assert journal.keep(chunk) is chunk
    request_bytes, tokens = journal.continuation()  # type: ignore[misc]
    request = pb.GenerateRequest.FromString(request_bytes)
    assert tokens == 8 and request.sampling.max_tokens == 9
    assert [list(p.token_ids) for p in request.continuation.choices] == [[1, 2, 3, 4]] * 2
    assert request.continuation.choices[0].finish_reason == pb.FINISH_REASON_STOP


def test_a_resumed_stream_resumes_again_from_everything_so_far() -> None:
    again = pb.GenerateRequest()
    again.CopyFrom(REQUEST)
    for i in (0, 1):
        again.continuation.choices.add(index=i, token_ids=[1, 2])
    journal = Journal(again.SerializeToString(), cap=1 << 20)
    journal.keep(message([3]))
    request = pb.GenerateRequest.FromString(journal.continuation()[0])  # type: ignore[index]
    assert [list(p.token_ids) for p in request.continuation.choices] == [[1, 2, 3]] * 2


def test_nothing_to_resume_once_usage_has_been_relayed() -> None:
    journal = Journal(REQUEST.SerializeToString(), cap=1 << 20)
    journal.keep(message([1], finish=pb.FINISH_REASON_LENGTH, usage=True))
    assert journal.continuation() is None


def test_past_the_cap_the_stream_is_not_resumable() -> None:
    journal = Journal(REQUEST.SerializeToString(), cap=40)
    journal.keep(message([1, 2]))
    assert journal.resumable
    journal.keep(message(list(range(20))))
    assert not journal.resumable


def test_deltas_without_token_ids_cannot_be_resumed() -> None:
    journal = Journal(REQUEST.SerializeToString(), cap=1 << 20)
    journal.keep(pb.GenerateResponse(choices=[pb.ChoiceDelta(num_tokens=3)]).SerializeToString())
    with pytest.raises(ValueError, match="token ids"):
        journal.continuation()


@pytest.mark.parametrize(
    ("method", "headers", "config", "resumable"),
    [
        (GENERATE, {}, ResumeConfig(), True),
        (GENERATE, {"tera-resume": "off"}, ResumeConfig(), False),
        (GENERATE, {}, ResumeConfig(max_resumes=0), False),
        ("/tera.v1.Engine/Synthesize", {}, ResumeConfig(), False),
    ],
)
def test_who_is_resumable(
    method: str, headers: dict, config: ResumeConfig, resumable: bool
) -> None:
    assert open_journal(method, b"", headers, config).resumable is resumable
