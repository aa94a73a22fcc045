"""Drives voxroute's GET /v1/realtime with the official OpenAI Python SDK, unmodified.

The only change from talking to OpenAI is the base URL (and the key, a voxroute key): the
SDK derives the WebSocket URL (ws://HOST/v1/realtime?model=MODEL) from it, as it does for
api.openai.com.

Usage: openai_realtime.py --base-url http://127.0.0.1:PORT/v1 --key vxr_... --model ROUTE
       --audio FILE --format pcm|pcmu [--chunk-ms 100] [--tail-secs 1.5] [--out FILE]

Streams FILE (raw audio in the chosen format: PCM16 LE 24 kHz, or mu-law 8 kHz) at real time
as input_audio_buffer.append events, after a session.update that sets the format; collects
what comes back until the audio has been quiet for --tail-secs; writes the reply audio
(decoded deltas, same format) to --out; prints one JSON object on stdout:

  {"session": {...session.created...}, "event_counts": {type: n}, "audio_bytes": n,
   "audio_bytes_sent": n, "reply_transcripts": [...], "input_transcripts": [...],
   "provider_switches": [{"from","to","reason"}], "audio_bytes_after_switch": n,
   "audio_bytes_sent_before_switch": n | null, "errors": [{...}],
   "first_event": type, "closed": null | "reason"}
"""

import argparse
import asyncio
import base64
import json
import sys
import time

from openai import AsyncOpenAI


def format_object(name):
    if name == "pcm":
        return {"type": "audio/pcm", "rate": 24000}, 24000 * 2
    if name == "pcmu":
        return {"type": "audio/pcmu"}, 8000
    if name == "pcma":
        return {"type": "audio/pcma"}, 8000
    raise SystemExit(f"unknown format {name}")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--format", default="pcm")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--tail-secs", type=float, default=1.5)
    parser.add_argument("--out")
    args = parser.parse_args()

    fmt, bytes_per_second = format_object(args.format)
    audio = open(args.audio, "rb").read()
    chunk = bytes_per_second * args.chunk_ms // 1000

    client = AsyncOpenAI(base_url=args.base_url, api_key=args.key)
    report = {
        "session": None,
        "event_counts": {},
        "audio_bytes": 0,
        "audio_bytes_sent": 0,
        "reply_transcripts": [],
        "input_transcripts": [],
        "provider_switches": [],
        "errors": [],
        "first_event": None,
        "audio_bytes_after_switch": 0,
        "audio_bytes_sent_before_switch": None,
        "closed": None,
    }
    received = bytearray()
    last_audio_at = [time.monotonic()]

    async with client.realtime.connect(model=args.model) as connection:

        async def receive():
            try:
                async for event in connection:
                    kind = event.type
                    if report["first_event"] is None:
                        report["first_event"] = kind
                    counts = report["event_counts"]
                    counts[kind] = counts.get(kind, 0) + 1
                    if kind == "session.created":
                        report["session"] = event.session.model_dump(exclude_none=True)
                    elif kind == "response.output_audio.delta":
                        chunk = base64.b64decode(event.delta)
                        received.extend(chunk)
                        if report["provider_switches"]:
                            report["audio_bytes_after_switch"] += len(chunk)
                        last_audio_at[0] = time.monotonic()
                    elif kind == "response.output_audio_transcript.done":
                        report["reply_transcripts"].append(event.transcript)
                    elif kind == "conversation.item.input_audio_transcription.completed":
                        report["input_transcripts"].append(event.transcript)
                    elif kind == "voxroute.provider_switched":
                        # Not an OpenAI event: the SDK builds it as it does any unknown type,
                        # keeping its fields.
                        data = event.model_dump()
                        report["provider_switches"].append(
                            {k: data.get(k) for k in ("from", "to", "reason")}
                        )
                        report["audio_bytes_sent_before_switch"] = report["audio_bytes_sent"]
                    elif kind == "error":
                        report["errors"].append(event.error.model_dump())
            except Exception as error:  # the socket closed: recorded, not raised
                report["closed"] = str(error)

        receiver = asyncio.create_task(receive())
        await connection.session.update(
            session={"type": "realtime", "audio": {"input": {"format": fmt}, "output": {"format": fmt}}}
        )
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(audio), chunk)):
            piece = audio[offset : offset + chunk]
            await connection.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
            report["audio_bytes_sent"] += len(piece)
            # Real time: chunk i goes out at i * chunk_ms.
            due = started + (index + 1) * args.chunk_ms / 1000
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        await connection.input_audio_buffer.commit()
        last_audio_at[0] = max(last_audio_at[0], time.monotonic())
        while time.monotonic() - last_audio_at[0] < args.tail_secs and not receiver.done():
            await asyncio.sleep(0.05)
        receiver.cancel()
        try:
            await receiver
        except asyncio.CancelledError:
            pass

    report["audio_bytes"] = len(received)
    if args.out:
        with open(args.out, "wb") as out:
            out.write(received)
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    asyncio.run(main())
