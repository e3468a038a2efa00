"""The serving benchmark's driver against in-process ASGI servers, its command line and its files.

The ASGI doubles (``httpx.ASGITransport``) hand a body over only once the app
finished, so these tests check behaviour (what is counted, parsed, written),
not timings; tests/test_bench_serving_mock.py times the served mock.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from engine._tokens import count_tokens
from engine.app import cli
from engine.app._serving_load import ServingConfig, build_bodies, run_steps, synthetic_prompt
from engine.app._serving_metrics import Slo, StepRecorder
from engine.app._serving_report import csv_rows, report_dict, table, write_report

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _chat_stream(tokens: int, *, usage: int | None) -> list[bytes]:
    """A streamed chat completion's SSE body: role, ``tokens`` contents, finish, usage, DONE."""

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        body = {"id": "c1", "object": "chat.completion.chunk", "choices": choices, **extra}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    events += [chunk([{"index": 0, "delta": {"content": f"w{i} "}}]) for i in range(tokens)]
    events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "length"}]))
    if usage is not None:
        events.append(chunk([], usage={"prompt_tokens": 9, "completion_tokens": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def _responses_stream(tokens: int) -> list[bytes]:
    """The SSE body of a streamed Responses API answer, with ``event:`` lines."""
    events = [b'event: response.created\ndata: {"type": "response.created"}\n\n']
    events += [
        b"event: response.output_text.delta\r\n"
        + b'data: {"type": "response.output_text.delta", "delta": "w"}\r\n\r\n'
        for _ in range(tokens)
    ]
    completed = {
        "type": "response.completed",
        "response": {"usage": {"input_tokens": 11, "output_tokens": tokens}},
    }
    events.append(b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n")
    return events


def _app(
    answer: Callable[[Scope, dict[str, Any]], tuple[int, list[bytes]]],
    seen: list[dict[str, Any]] | None = None,
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app answering each POST with ``answer(scope, request)``: (status, body pieces)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        if seen is not None:
            seen.append(request)
        status, pieces = answer(scope, request)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _run(app: Any, mode: str = "concurrency", target: float = 2, **config: Any) -> Any:
    settings: dict[str, Any] = {"duration": 0.3, "warmup": 0.0, "seed": 1} | config
    return run_steps(
        ServingConfig(base_url="http://bench.test/v1", **settings),
        mode,
        [target],
        transport_factory=lambda: httpx.ASGITransport(app),
    )[0]


def test_streamed_chat_counts_output_tokens_from_the_usage_chunk() -> None:
    """Three content chunks but usage says 7: each answer counts 7 tokens, with TTFT and ITL."""
    step = _run(_app(lambda scope, request: (200, _chat_stream(3, usage=7))))
    assert step.completed > 0
    assert step.errors == {}
    assert step.output_tokens == 7 * step.completed
    assert step.ttft.count == step.completed
    # two gaps per answer between its three content chunks: role and finish chunks carry no output
    assert step.itl.count == 2 * step.completed
    assert step.tpot.count == step.completed


def test_without_a_usage_chunk_the_content_chunks_are_counted() -> None:
    """A server that sends no usage: output tokens = content-bearing chunks (4)."""
    step = _run(_app(lambda scope, request: (200, _chat_stream(4, usage=None))))
    assert step.completed > 0
    assert step.output_tokens == 4 * step.completed


def test_streamed_requests_ask_for_the_usage_chunk_and_the_output_length() -> None:
    """Bodies carry stream, stream_options.include_usage, max_tokens and ignore_eos when asked."""
    seen: list[dict[str, Any]] = []
    _run(_app(lambda s, r: (200, _chat_stream(1, usage=1)), seen), output_tokens=5, ignore_eos=True)
    assert seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert seen[0]["max_tokens"] == 5
    assert seen[0]["ignore_eos"] is True


def test_responses_endpoint_reads_output_text_deltas_and_the_completed_usage() -> None:
    """/responses: each output_text.delta is a token chunk; usage from response.completed."""
    seen: list[dict[str, Any]] = []

    def answer(scope: Scope, request: dict[str, Any]) -> tuple[int, list[bytes]]:
        assert scope["path"] == "/v1/responses"
        return 200, _responses_stream(5)

    step = _run(_app(answer, seen), endpoint="responses", output_tokens=20)
    assert step.completed > 0
    assert step.errors == {}
    assert step.output_tokens == 5 * step.completed
    assert step.input_tokens == 11 * step.completed
    assert step.itl.count == 4 * step.completed
    assert seen[0]["max_output_tokens"] == 20
    assert "stream_options" not in seen[0]


def test_rate_limited_and_failed_streams_are_errors_by_kind() -> None:
    """429s count as rate_limited; a stream whose chunk carries an error is a stream_error."""
    calls = [0]

    def answer(scope: Scope, request: dict[str, Any]) -> tuple[int, list[bytes]]:
        calls[0] += 1
        if calls[0] % 2:
            return 429, [b'{"error": {"message": "slow down"}}']
        return 200, [b'data: {"error": {"message": "overloaded"}}\n\n']

    step = _run(_app(answer))
    assert step.completed == 0
    assert step.rate_limited > 0
    assert "http_429" not in step.errors
    assert step.errors["stream_error"] > 0


def test_a_stream_without_output_is_an_error() -> None:
    """A 200 whose stream carries no output (only DONE) is ``no_output``, as vLLM fails it."""
    step = _run(_app(lambda s, r: (200, [b"data: [DONE]\n\n"])))
    assert step.completed == 0
    assert step.errors["no_output"] > 0


def test_no_stream_reads_whole_answers_and_measures_e2e_only() -> None:
    """--no-stream: no stream flag sent, usage read from the JSON body, no token timings."""
    seen: list[dict[str, Any]] = []
    answer = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 6}})
    step = _run(_app(lambda s, r: (200, [answer.encode()]), seen), stream=False)
    assert "stream" not in seen[0]
    assert step.completed > 0
    assert step.output_tokens == 6 * step.completed
    assert step.e2e.count == step.completed
    assert step.ttft.count == 0


def test_open_loop_offers_its_rate_and_reports_whether_it_was_met() -> None:
    """40/s constant for 0.5 s: about 20 arrivals offered, answered, the offered load met."""
    step = _run(
        _app(lambda s, r: (200, _chat_stream(2, usage=2))),
        "rate",
        40.0,
        duration=0.5,
        poisson=False,
    )
    assert step.offered_rate == pytest.approx(40.0, rel=0.1)
    assert step.completed >= 15
    assert step.offered_met is True
    assert step.send_lag.count > 0


def test_synthetic_prompts_have_exactly_the_tokens_asked_for() -> None:
    """--input-tokens 100: each prompt is 100 tokens in the model's encoding; prompts differ."""
    import random

    rng = random.Random(5)
    for model in ("gpt-4o-mini", "gpt-4"):
        prompts = {synthetic_prompt(100, model, rng) for _ in range(5)}
        assert len(prompts) == 5
        assert {count_tokens(p, model) for p in prompts} == {100}
    bodies = build_bodies(ServingConfig(base_url="x", input_tokens=32, seed=2))
    assert len(set(bodies)) == len(bodies) > 1


# -- the command line and its files ----------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--request-rate", "0"],
        ["--concurrency", "1.5"],
        ["--slo", "latency=3"],
        ["--duration", "0"],
        ["--output-tokens", "0"],
    ],
)
def test_bad_load_options_exit_2_before_sending(flags: list[str], capsys: Any) -> None:
    """Refused options exit 2 with a message on stderr, nothing sent (no server at this URL)."""
    assert cli.main(["bench", "--base-url", "http://127.0.0.1:9/v1", *flags]) == 2
    assert "engine bench:" in capsys.readouterr().err


def test_rate_and_concurrency_exclude_each_other() -> None:
    """--request-rate with --concurrency is an argparse error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--base-url", "x", "--request-rate", "5", "--concurrency", "2"])
    assert exit_info.value.code == 2


def _two_steps() -> list[Any]:
    steps = []
    for target in (1.0, 2.0):
        recorder = StepRecorder(
            mode="rate", target=target, window_start=0.0, duration=1.0, slo=Slo(ttft=0.5)
        )
        recorder.scheduled(0.1, 0.0)
        if target == 2.0:  # three more arrivals, never answered: the offered load is not met
            for at in (0.3, 0.6, 0.8):
                recorder.scheduled(at, 0.0)
        recorder.answered(0.1, 0.4, first_token=0.2, token_times=[0.2, 0.3, 0.4], output_tokens=3)
        recorder.failed(0.2, "http_429")
        steps.append(recorder.result(cpu_seconds=0.1))
    return steps


def test_json_report_has_the_keys_the_peers_script_reads(tmp_path: Any) -> None:
    """-o x.json: tool, version, config, self_check and one step object per step, in ms."""
    steps = _two_steps()
    path = tmp_path / "results.json"
    config = ServingConfig(base_url="http://x/v1", api_key="sk-secret-123").to_dict()
    write_report(str(path), report_dict(config, None, steps), steps)
    data = json.loads(path.read_text())
    assert data["tool"] == "quota-engine"
    assert data["self_check"] is None
    assert "sk-secret" not in path.read_text()
    step = data["steps"][0]
    expected = {
        "mode", "target", "duration_s", "completed", "errors", "rate_limited", "offered_rate",
        "requests_per_second", "output_tokens_per_second", "ttft_ms", "itl_ms", "tpot_ms",
        "e2e_ms", "goodput_rps", "client_cpu_share", "client_bound", "offered_met",
    }  # fmt: skip
    assert expected <= set(step)
    assert step["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert set(step["itl_ms"]) == {"mean", "p50", "p90", "p99"}
    assert step["errors"] == {}
    assert step["rate_limited"] == 1
    assert step["goodput_rps"] == pytest.approx(1.0)


def test_csv_report_has_one_row_per_step(tmp_path: Any) -> None:
    """-o x.csv: a header and one flat row per step with latency columns in ms."""
    steps = _two_steps()
    path = tmp_path / "results.csv"
    write_report(str(path), report_dict({}, None, steps), steps)
    rows = list(csv.DictReader(path.open()))
    assert [float(row["target"]) for row in rows] == [1.0, 2.0]
    assert float(rows[0]["tpot_ms_p50"]) == pytest.approx(100.0)
    assert rows[0]["errors"] == "0"
    assert rows[0]["rate_limited"] == "1"
    assert list(rows[0]) == list(csv_rows(steps)[0])


def test_table_has_a_row_per_step_and_flags_unmet_load() -> None:
    """The end-of-run table: header, rule, a row per step; an unmet offered load is named."""
    text = table(_two_steps())
    lines = text.splitlines()
    assert len(lines) == 4
    assert "TTFT p50/p99" in lines[0]
    assert "offered load not met" in lines[3]


def test_requests_still_running_after_the_grace_are_counted_unfinished() -> None:
    """A server that never answers: the step ends at window + grace, each request unfinished."""
    import trio

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await trio.sleep_forever()

    step = _run(app, duration=0.2, grace=0.2)
    assert step.completed == 0
    assert step.errors == {"unfinished": 2}


@pytest.mark.parametrize(
    ("data", "output"),
    [
        (b'{"choices":[{"index":0,"delta":{"content":"hi"}}]}', True),
        (b'{"choices":[{"index":0,"delta":{"content":"\\"quoted\\""}}]}', True),
        (b'{"choices": [{"index": 0, "delta": {"content": "spaced"}}]}', True),
        (b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', False),
        (b'{"choices":[{"delta":{"content":null,"reasoning_content":"hmm"}}]}', True),
        (b'{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}', True),
        (b'{"choices":[{"delta":{},"finish_reason":"stop"}]}', False),
        (b'{"choices":[{"delta":{"content":""}}]}', True),
        (b'{"choices":[{"delta":{"function_call":{"name":"f"}}}]}', True),
        (b'{"choices":[{"delta":{},"logprobs":{"content":[]}}]}', False),
        (b'{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9}}', False),
    ],
)
def test_chat_chunks_carry_output_only_with_non_empty_content_reasoning_or_tools(
    data: bytes, output: bool
) -> None:
    """As vLLM counts them: role-only, finish and usage chunks carry no output; an empty
    content without a role (a token decoding to nothing) does."""
    from engine.app._serving_load import _chat_event

    times: list[float] = []
    usage = [0, -1]
    assert _chat_event(data, 1.5, times, usage) is None
    assert times == ([1.5] if output else [])
    if b"usage" in data:
        assert usage == [4, 9]


def test_warnings_name_client_bound_steps_unmet_load_and_errors() -> None:
    """A step at 90% of a core with an unmet offered load and a 429 gets three warnings."""
    from engine.app._serving_report import step_warnings

    recorder = StepRecorder(mode="rate", target=5.0, window_start=0.0, duration=1.0)
    for at in (0.1, 0.3, 0.5, 0.7):
        recorder.scheduled(at, 0.0)
    recorder.failed(0.1, "http_429")
    warnings = step_warnings(recorder.result(cpu_seconds=0.9), ceiling=None)
    assert len(warnings) == 3
    assert "client-bound" in warnings[0] and "90% of a core" in warnings[0]
    assert "offered load not met" in warnings[1]
    assert "1 rate limited" in warnings[2]


def test_progress_hook_gets_status_lines_while_a_step_runs() -> None:
    """--progress: about two lines a second naming the step, its phase and its counts."""
    lines: list[str] = []
    run_steps(
        ServingConfig(base_url="http://bench.test/v1", duration=0.8, warmup=1.1),
        "concurrency",
        [2],
        progress=lines.append,
        transport_factory=lambda: httpx.ASGITransport(
            _app(lambda s, r: (200, _chat_stream(2, usage=2)))
        ),
    )
    assert len(lines) >= 3
    assert lines[0].startswith("[1/1] concurrency 2 warm-up")
    assert any(" measuring " in line for line in lines[1:])
    assert all("sent " in line and " ok " in line for line in lines)


def test_open_loop_drops_arrivals_beyond_max_in_flight_and_says_the_load_was_not_met() -> None:
    """2 connections at most against 0.3 s answers at 40/s: the rest are dropped, counted."""
    import trio

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await trio.sleep(0.3)
        await _app(lambda s, r: (200, _chat_stream(1, usage=1)))(scope, receive, send)

    step = _run(slow, "rate", 40.0, duration=0.5, poisson=False, max_in_flight=2)
    assert step.errors["dropped"] >= 10
    assert step.offered_met is False
