"""Streams a WAV file to voxroute's /v1/listen through the official Deepgram Python SDK,
unmodified, and prints what came back as one JSON object on stdout.

The only change from a program that talks to Deepgram is the client's environment: its
WebSocket base URL is voxroute's. The key is a voxroute key, sent by the SDK as
`Authorization: Token <key>`.

Usage: python deepgram_listen.py '<json>' where the JSON holds
  url              voxroute's WebSocket base URL (ws://127.0.0.1:PORT)
  api_key          the voxroute key
  model            the `model` query parameter (a voxroute route or provider name here)
  wav              a mono 16-bit WAV file to stream as linear16 at its own rate
  chunk_ms         audio per binary message (default 100), sent at real time
  interim_results  bool (default false)
  keepalive_s      seconds of silence to bridge with KeepAlive after the audio (default 0)
  extra            extra query parameters (dict), through the SDK's request options

Output: {"results": [{"transcript", "is_final", "start", "duration", "model", "at"}],
         "audio_done_at": seconds (from the first audio sent to the last; "at" likewise),
         "metadata": {...} | null, "close_code": int | null, "close_reason": str | null,
         "error_status": int | null, "other_messages": [types]}
"""

import json
import sys
import threading
import time
import wave

from websockets.exceptions import InvalidStatus

from deepgram import DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment


def main() -> None:
    args = json.loads(sys.argv[1])
    base = args["url"]
    environment = DeepgramClientEnvironment(
        base=base.replace("ws://", "http://").replace("wss://", "https://"),
        production=base,
        agent=base,
        agent_rest=base,
    )
    client = DeepgramClient(api_key=args["api_key"], environment=environment)

    with wave.open(args["wav"], "rb") as wav:
        rate = wav.getframerate()
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2, "mono PCM16 WAV"
        audio = wav.readframes(wav.getnframes())
    chunk_ms = int(args.get("chunk_ms", 100))
    chunk_bytes = rate * 2 * chunk_ms // 1000

    report = {
        "results": [],
        "metadata": None,
        "close_code": None,
        "close_reason": None,
        "error_status": None,
        "other_messages": [],
        "audio_done_at": None,
    }
    clock = {"started": time.monotonic()}
    options = {}
    if args.get("extra"):
        options["request_options"] = {"additional_query_parameters": args["extra"]}
    try:
        with client.listen.v1.connect(
            model=args["model"],
            encoding="linear16",
            sample_rate=rate,
            channels=1,
            interim_results="true" if args.get("interim_results") else "false",
            **options,
        ) as socket:

            def send() -> None:
                started = clock["started"] = time.monotonic()
                for index, offset in enumerate(range(0, len(audio), chunk_bytes)):
                    # Real time: each chunk goes out when its audio would have been spoken.
                    due = started + index * chunk_ms / 1000
                    time.sleep(max(0.0, due - time.monotonic()))
                    socket.send_media(audio[offset : offset + chunk_bytes])
                report["audio_done_at"] = time.monotonic() - started
                silence_until = time.monotonic() + float(args.get("keepalive_s", 0))
                while time.monotonic() < silence_until:
                    socket.send_keep_alive()
                    time.sleep(min(3.0, max(0.0, silence_until - time.monotonic())))
                socket.send_close_stream()

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            try:
                for message in socket:
                    kind = getattr(message, "type", None)
                    if kind == "Results":
                        alternative = message.channel.alternatives[0]
                        report["results"].append(
                            {
                                "transcript": alternative.transcript,
                                "is_final": message.is_final,
                                "start": message.start,
                                "duration": message.duration,
                                "model": message.metadata.model_info.name,
                                "at": time.monotonic() - clock["started"],
                            }
                        )
                    elif kind == "Metadata":
                        report["metadata"] = {
                            "request_id": message.request_id,
                            "sha256": message.sha256,
                            "duration": message.duration,
                            "channels": message.channels,
                            "created": message.created,
                        }
                    else:
                        report["other_messages"].append(str(kind))
            except Exception as error:  # a close other than 1000 ends the iteration this way
                report["other_messages"].append(type(error).__name__)
            sender.join(timeout=5)
            # The SDK keeps the websockets connection as `_websocket`; only read here.
            connection = socket._websocket
            report["close_code"] = getattr(connection, "close_code", None)
            report["close_reason"] = getattr(connection, "close_reason", None)
    except ApiError as error:
        report["error_status"] = error.status_code
    except InvalidStatus as error:
        # With websockets 14+ the SDK's own wrapping of a refused upgrade misses (it expects
        # the legacy exception), so the refusal arrives as websockets' exception.
        report["error_status"] = error.response.status_code
    print(json.dumps(report))


if __name__ == "__main__":
    main()
