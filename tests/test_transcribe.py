"""Transcriptions end to end against the in-process mock (httpx.ASGITransport, virtual clock)."""

from __future__ import annotations

import io
import os
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from audio_fixtures import make_corrupt_mp3, make_mp3, make_non_audio, mp3_bytes

import engine
from engine.mock import MockConfig, create_app
from engine.mock._audio import parse_multipart

KEY = "sk-test-secret-key-0123456789"
CHAT_MODEL = "gpt-4o-mini"
# lameenc files read 0.08 to 0.1 s long (encoder delay and padding).
DURATION_SLACK = 0.15


class RecordingApp:
    """ASGI middleware keeping every transcription upload's body and content type."""

    def __init__(self, app) -> None:
        self.app = app
        self.uploads: list[tuple[bytes, str]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/audio/transcriptions"):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode()
        self.uploads.append((body, content_type))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def fields(self, index: int = -1):
        body, content_type = self.uploads[index]
        return parse_multipart(body, content_type)


@asynccontextmanager
async def mock_client(config: MockConfig | None = None, **options):
    app = create_app(config or MockConfig())
    recorder = RecordingApp(app)
    options.setdefault("retry_base_delay", 0.01)
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=KEY,
        transport=httpx.ASGITransport(recorder),
        **options,
    ) as client:
        yield client, app, recorder


def requests_seen(app) -> int:
    return app.stats.as_dict()["requests"]


async def collect(client, items):
    return [result async for result in client.map(items)]


async def test_long_file_is_transcribed_with_its_metadata(tmp_path, autojump_clock):
    """A 7 s MP3 comes back with text, file name, duration, usage and timings."""
    path = make_mp3(tmp_path / "call.mp3", 7)
    async with mock_client() as (client, _app, _rec):
        result = await client.transcribe(path)
    assert result.ok and not result.skipped
    assert result.id == "call.mp3" and result.file == "call.mp3"
    assert result.text.startswith("Mock transcription of call.mp3: 7.")
    assert 7 <= result.duration_seconds <= 7 + DURATION_SLACK
    assert result.usage.seconds == 8  # the mock bills whole seconds, rounded up
    assert result.model == "whisper-1" and result.attempts == 1 and result.status_code == 200
    timings = result.timings
    assert timings.queued_at <= timings.sent_at <= timings.finished_at
    assert timings.latency is not None


async def test_short_file_is_skipped_and_nothing_is_sent(tmp_path, autojump_clock):
    """A 2 s file under the default min_seconds=5 is skipped without a request."""
    path = make_mp3(tmp_path / "short.mp3", 2)
    async with mock_client() as (client, app, _rec):
        result = await client.transcribe(path)
        assert client.statistics().skipped == 1
    assert result.skipped and result.ok and result.text is None and result.attempts == 0
    assert "min_seconds=5" in result.skip_reason
    assert 2 <= result.duration_seconds <= 2 + DURATION_SLACK
    assert requests_seen(app) == 0


async def test_min_seconds_zero_disables_skipping(tmp_path, autojump_clock):
    """min_seconds=0 sends even a 1 s file."""
    path = make_mp3(tmp_path / "tiny.mp3", 1)
    async with mock_client() as (client, app, _rec):
        result = await client.transcribe(path, min_seconds=0)
    assert result.ok and not result.skipped and result.text
    assert requests_seen(app) == 1


async def test_min_seconds_is_configurable(tmp_path, autojump_clock):
    """min_seconds=10 skips a 7 s file."""
    path = make_mp3(tmp_path / "call.mp3", 7)
    async with mock_client() as (client, app, _rec):
        result = await client.transcribe(path, min_seconds=10)
    assert result.skipped and "min_seconds=10" in result.skip_reason
    assert requests_seen(app) == 0


async def test_corrupt_file_raises_input_error_naming_it(tmp_path, autojump_clock):
    """An MP3 with garbage frames raises InputError naming the file; nothing is sent."""
    path = make_corrupt_mp3(tmp_path / "broken.mp3")
    async with mock_client() as (client, app, _rec):
        with pytest.raises(engine.InputError, match=r"broken\.mp3"):
            await client.transcribe(path)
    assert requests_seen(app) == 0


async def test_non_audio_file_raises_input_error_naming_it(tmp_path, autojump_clock):
    """A text file raises InputError saying it is not readable audio."""
    path = make_non_audio(tmp_path / "notes.txt")
    async with mock_client() as (client, app, _rec):
        with pytest.raises(engine.InputError, match=r"notes\.txt: not readable audio"):
            await client.transcribe(path)
    assert requests_seen(app) == 0


async def test_missing_file_raises_input_error_naming_it(tmp_path, autojump_clock):
    """A path that does not exist raises InputError naming it."""
    async with mock_client() as (client, _app, _rec):
        with pytest.raises(engine.InputError, match=r"gone\.mp3"):
            await client.transcribe(tmp_path / "gone.mp3")


async def test_bad_files_are_item_errors_and_the_batch_goes_on(tmp_path, autojump_clock):
    """In map, corrupt and non-audio files fail as items; the good file is transcribed."""
    items = [
        engine.TranscriptionRequest(id="bad", source=make_corrupt_mp3(tmp_path / "bad.mp3")),
        engine.TranscriptionRequest(id="txt", source=make_non_audio(tmp_path / "t.mp3")),
        engine.TranscriptionRequest(id="good", source=make_mp3(tmp_path / "good.mp3", 6)),
    ]
    async with mock_client() as (client, _app, _rec):
        results = {r.id: r for r in await collect(client, items)}
    assert results["good"].ok and results["good"].text
    for key, name in (("bad", "bad.mp3"), ("txt", "t.mp3")):
        assert results[key].error.code == "invalid_input"
        assert name in results[key].error.message and results[key].file == name


async def test_bytes_source_is_uploaded_under_a_name_with_its_format(autojump_clock):
    """Bytes are transcribed; the upload is named audio.mp3 from the detected format."""
    async with mock_client() as (client, _app, recorder):
        result = await client.transcribe(mp3_bytes(6), id="b1")
    assert result.ok and result.id == "b1" and result.file == "audio.mp3"
    assert recorder.fields()["file"].filename == "audio.mp3"
    assert recorder.fields()["file"].data == mp3_bytes(6)


async def test_file_object_source_uses_its_name(tmp_path, autojump_clock):
    """An open binary file is read once and uploaded under its base name."""
    path = make_mp3(tmp_path / "meeting.mp3", 6)
    async with mock_client() as (client, _app, recorder):
        with path.open("rb") as file:
            result = await client.transcribe(file)
    assert result.ok and result.file == "meeting.mp3"
    assert recorder.fields()["file"].data == path.read_bytes()


async def test_nameless_file_object_takes_the_given_filename(autojump_clock):
    """A BytesIO has no name: filename= names the upload."""
    async with mock_client() as (client, _app, recorder):
        result = await client.transcribe(io.BytesIO(mp3_bytes(6)), filename="x.mp3")
    assert result.ok and recorder.fields()["file"].filename == "x.mp3"


async def test_a_retry_resends_the_whole_file(tmp_path, autojump_clock):
    """503s force retries; every attempt uploads the complete file and the answer reads it."""
    path = make_mp3(tmp_path / "call.mp3", 9)
    size = path.stat().st_size
    config = MockConfig(error_503_rate=0.7, seed=3)
    async with mock_client(config, max_attempts=20) as (client, _app, recorder):
        results = [await client.transcribe(path, id=f"t{i}") for i in range(4)]
    assert any(r.attempts > 1 for r in results), "the seed should force at least one retry"
    assert len(recorder.uploads) == sum(r.attempts for r in results)
    for index in range(len(recorder.uploads)):
        assert len(recorder.fields(index)["file"].data) == size
    for result in results:
        assert result.ok and "9.0" in result.text  # the server read all 9 s


async def test_retried_bytes_source_resends_the_whole_file(autojump_clock):
    """Bytes sources are re-sent whole on retry too."""
    data = mp3_bytes(8)
    async with mock_client(MockConfig(error_503_rate=0.7, seed=3), max_attempts=20) as (
        client,
        _app,
        recorder,
    ):
        results = [await client.transcribe(data, id=f"b{i}") for i in range(4)]
    assert sum(r.attempts for r in results) > 4
    assert all(recorder.fields(i)["file"].data == data for i in range(len(recorder.uploads)))


async def test_files_over_25_mb_fail_locally(tmp_path, autojump_clock):
    """A 26 MB file fails with InputError naming the limit; nothing is sent."""
    path = tmp_path / "huge.mp3"
    path.write_bytes(b"")
    os.truncate(path, engine.MAX_UPLOAD_BYTES + 1)  # sparse: no 25 MB written
    async with mock_client() as (client, app, _rec):
        with pytest.raises(engine.InputError, match=r"huge\.mp3: .*25 MB upload limit"):
            await client.transcribe(path)
    assert requests_seen(app) == 0


async def test_bytes_over_25_mb_fail_locally(autojump_clock):
    """Bytes above the limit fail the same way."""
    async with mock_client() as (client, app, _rec):
        with pytest.raises(engine.InputError, match="25 MB upload limit"):
            await client.transcribe(b"\0" * (engine.MAX_UPLOAD_BYTES + 1))
    assert requests_seen(app) == 0


@pytest.mark.parametrize("response_format", ["json", "verbose_json"])
async def test_json_formats_keep_the_body(response_format, tmp_path, autojump_clock):
    """json and verbose_json results keep the server's body; verbose_json has segments."""
    path = make_mp3(tmp_path / "call.mp3", 6)
    async with mock_client() as (client, _app, recorder):
        result = await client.transcribe(path, response_format=response_format)
    assert recorder.fields()["response_format"].data.decode() == response_format
    assert result.response["text"] == result.text
    assert ("segments" in result.response) is (response_format == "verbose_json")


async def test_text_format_stores_the_text_as_a_json_body(tmp_path, autojump_clock):
    """The text format gives plain text; the result's response is {"text": ...}."""
    path = make_mp3(tmp_path / "call.mp3", 6)
    async with mock_client() as (client, _app, _rec):
        result = await client.transcribe(path, response_format="text")
    assert result.text.startswith("Mock transcription of call.mp3")
    assert not result.text.endswith("\n")
    assert result.response == {"text": result.text}
    # no usage in a text answer: the locally read duration stands in
    assert result.usage.seconds == result.duration_seconds


async def test_options_are_passed_through_as_form_fields(tmp_path, autojump_clock):
    """language, prompt, temperature and extra params reach the server; None ones do not."""
    path = make_mp3(tmp_path / "call.mp3", 6)
    async with mock_client() as (client, _app, recorder):
        await client.transcribe(
            path, model="gpt-4o-mini-transcribe", language="fr", prompt="Bonjour", temperature=0.2
        )
        await client.transcribe(path)
    sent = {
        name: field.data.decode() for name, field in recorder.fields(0).items() if name != "file"
    }
    assert sent == {
        "model": "gpt-4o-mini-transcribe",
        "response_format": "json",
        "language": "fr",
        "prompt": "Bonjour",
        "temperature": "0.2",
    }
    assert set(recorder.fields(1)) == {"file", "model", "response_format"}


async def test_malformed_transcription_body_is_a_response_validation_error(
    tmp_path, autojump_clock
):
    """A 200 whose JSON is cut short raises ResponseValidationError naming the file."""
    path = make_mp3(tmp_path / "call.mp3", 6)
    async with mock_client(MockConfig(malformed_json_rate=1.0)) as (client, _app, _rec):
        with pytest.raises(engine.ResponseValidationError, match=r"call\.mp3"):
            await client.transcribe(path)


async def test_batch_api_dicts_for_transcriptions_are_accepted(tmp_path, autojump_clock):
    """map takes /v1/audio/transcriptions lines with body.file a local path."""
    path = make_mp3(tmp_path / "call.mp3", 6)
    line = {
        "custom_id": "rec-1",
        "method": "POST",
        "url": "/v1/audio/transcriptions",
        "body": {"model": "whisper-1", "file": str(path), "response_format": "text"},
    }
    async with mock_client() as (client, _app, _rec):
        (result,) = await collect(client, [line])
    assert isinstance(result, engine.TranscriptionResult)
    assert result.id == "rec-1" and result.ok and result.response == {"text": result.text}


async def test_batch_dict_without_a_file_is_an_item_error(autojump_clock):
    """A transcription line without body.file is an invalid_input transcription result."""
    line = {"custom_id": "x", "url": "/v1/audio/transcriptions", "body": {"model": "whisper-1"}}
    async with mock_client() as (client, _app, _rec):
        (result,) = await collect(client, [line])
    assert isinstance(result, engine.TranscriptionResult)
    assert result.error.code == "invalid_input" and "body.file" in result.error.message


async def test_map_mixes_chat_and_transcription_requests(tmp_path, autojump_clock):
    """Chat and transcription requests share one map; each gets its own result kind."""
    long_path = make_mp3(tmp_path / "long.mp3", 6)
    short_path = make_mp3(tmp_path / "short.mp3", 1)
    items = [
        engine.ChatRequest(id="c1", messages="hi", model=CHAT_MODEL),
        engine.TranscriptionRequest(id="t1", source=long_path),
        {
            "custom_id": "c2",
            "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x"}]},
        },
        engine.TranscriptionRequest(id="t2", source=short_path),
    ]
    async with mock_client() as (client, app, _rec):
        results = {r.id: r for r in await collect(client, items)}
        stats = client.statistics()
    assert set(results) == {"c1", "c2", "t1", "t2"}
    assert all(isinstance(results[k], engine.ChatResult) for k in ("c1", "c2"))
    assert all(isinstance(results[k], engine.TranscriptionResult) for k in ("t1", "t2"))
    assert all(r.ok for r in results.values()) and results["t2"].skipped
    assert requests_seen(app) == 3 and stats.skipped == 1 and stats.sent == 3


async def test_transcriptions_go_through_the_limiter(autojump_clock):
    """90 transcriptions at 60 RPM take at least 30 s and draw no 429."""
    # bytes, not a path: a path is re-read in a thread after the permit, and the
    # virtual clock jumps during thread waits, which would delay the burst.
    data = mp3_bytes(6)
    items = [engine.TranscriptionRequest(id=str(i), source=data) for i in range(90)]
    config = MockConfig(rpm=60)
    async with mock_client(config, limits=engine.Limits(rpm=60)) as (client, app, _rec):
        start = trio.current_time()
        results = await collect(client, items)
        elapsed = trio.current_time() - start
    assert all(r.ok for r in results)
    assert app.stats.status_counts.get(429, 0) == 0
    # a fresh 60 RPM bucket grants 60 at once, then one a second
    assert elapsed >= 29


async def test_transcriptions_cost_no_tokens_by_default(tmp_path, autojump_clock):
    """With a tiny TPM limit, a transcription still goes: it costs one request, no tokens."""
    path = make_mp3(tmp_path / "call.mp3", 6)
    async with mock_client(limits=engine.Limits(tpm=10)) as (client, _app, _rec):
        result = await client.transcribe(path)
    assert result.ok


async def test_audio_tokens_per_second_charges_tokens(tmp_path, autojump_clock):
    """audio_tokens_per_second=10 makes a 6 s file cost 61 tokens: above tpm=50 it fails locally."""
    path = make_mp3(tmp_path / "call.mp3", 6)
    options = {"limits": engine.Limits(tpm=50), "audio_tokens_per_second": 10}
    async with mock_client(**options) as (client, app, _rec):
        with pytest.raises(engine.RequestTooLargeError):
            await client.transcribe(path)
    assert requests_seen(app) == 0


def test_transcription_request_rejects_an_unknown_format():
    """response_format must be one the API knows."""
    with pytest.raises(ValueError, match="response_format"):
        engine.TranscriptionRequest(source="a.mp3", response_format="xml")
