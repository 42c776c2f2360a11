"""VLM annotation: reply parsing, the OpenAI-compatible backend against a local scripted server,
and the transformers backend through its injectable generate callable."""

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from emcot.training.annotation.annotations import read_annotations
from emcot.training.annotation.annotators import EpisodeContext, VLMAnnotator, VLMAnnotatorConfig
from emcot.training.annotation.pipeline import ContextConfig, annotate_dataset
from emcot.training.annotation.primitives import PrimitiveSegment
from emcot.training.annotation.vlm_backends import (
    BackendError,
    OpenAIChatBackend,
    OpenAIConfig,
    RateLimiter,
    RetryPolicy,
    TransformersBackend,
    VLMRequest,
)
from emcot.training.annotation.vlm_prompts import (
    ReplyError,
    extract_json,
    load_prompt,
    parse_alignment,
    parse_subtasks,
)
from emcot.training.data.lerobot import LeRobotDataset

_spec = importlib.util.spec_from_file_location(
    "lerobot_fixtures", Path(__file__).parents[1] / "lerobot_fixtures.py"
)
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

NARRATIVE = json.dumps({"narrative": "The arm reaches the cube, grasps it, lifts it and lets go."})
SUBTASKS = json.dumps({"subtasks": ["Grasp the cube", "Lift the cube"]})


def alignment(end_first: int, last: int = 23) -> str:
    return json.dumps(
        {
            "segments": [
                {
                    "subtask": "Grasp the cube",
                    "start": 0,
                    "end": end_first,
                    "reasoning": "I see the cube; I close my gripper.",
                },
                {
                    "subtask": "Lift the cube",
                    "start": end_first + 1,
                    "end": last,
                    "reasoning": "I hold it and raise my arm.",
                },
            ]
        }
    )


class ScriptedServer:
    """An OpenAI-compatible endpoint on 127.0.0.1 answering from a script, one item per request.

    Items: ("reply", text), ("sleep", seconds, text) to outlast the client timeout, ("status", code).
    """

    def __init__(self, script):
        self.script, self.requests, self.lock = list(script), [], threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                    )
                    item = owner.script.pop(0) if owner.script else ("status", 410)
                if item[0] == "status":
                    self.send_response(item[1])
                    self.end_headers()
                    self.wfile.write(b"scripted error")
                    return
                if item[0] == "sleep":
                    time.sleep(item[1])
                payload = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": item[-1]}}]}
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _backend(url, timeout_s=5.0, attempts=3):
    retry = RetryPolicy(max_attempts=attempts, backoff_s=0.01, backoff_factor=1.0)
    return OpenAIChatBackend(
        OpenAIConfig(url, "qwen3-vl-test", api_key="secret", timeout_s=timeout_s, retry=retry)
    )


def test_openai_pipeline_retries_records_failures_and_resumes(tmp_path):
    root, _ = fixtures.make_dataset(tmp_path / "ds", "v3.0", "image", count=2)
    dataset = LeRobotDataset(root)
    out = tmp_path / "ann.jsonl"
    script = [
        # episode 0: malformed JSON, then a narrative; a timeout, then subtasks; out-of-range frames, then a fix
        ("reply", "Sure! {narrative: the arm moves"),
        ("reply", "```json\n" + NARRATIVE + "\n```"),
        ("sleep", 1.0, SUBTASKS),
        ("reply", SUBTASKS),
        ("reply", alignment(12, last=99)),
        ("reply", alignment(12)),
        # episode 1: a server error, then a narrative; three malformed subtask replies -> failed
        ("status", 503),
        ("reply", NARRATIVE),
        ("reply", "not json"),
        ("reply", json.dumps({"subtasks": []})),
        ("reply", json.dumps({"steps": ["Grasp"]})),
    ]
    config = VLMAnnotatorConfig(max_reply_attempts=3)
    context = ContextConfig(max_images=3)
    with ScriptedServer(script) as server:
        annotator = VLMAnnotator(_backend(server.url, timeout_s=0.3), config)
        summary = annotate_dataset(dataset, annotator, out, context=context, workers=1, progress=False)
        requests = list(server.requests)
    assert (summary.ok, summary.failed, summary.skipped) == (1, 1, 0)
    assert (
        "stage subtasks: invalid reply" in summary.failures[1]
        and "(after 3 attempt(s))" in summary.failures[1]
    )
    first = requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret"
    parts = first["body"]["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    # The retry after a rejected reply tells the model why.
    assert (
        "rejected: the reply contains no valid JSON"
        in requests[1]["body"]["messages"][-1]["content"][-1]["text"]
    )
    assert "last frame 23" in requests[5]["body"]["messages"][-1]["content"][-1]["text"]
    saved = read_annotations(out)
    assert saved[0].status == "ok" and [s.subgoal_frame for s in saved[0].subtasks] == [12, 23]
    assert saved[0].annotator == {"backend": "openai", "model": "qwen3-vl-test"}
    assert saved[0].prompt_versions == {"narrative": "v1", "subtasks": "v1", "alignment": "v1"}
    assert saved[1].status == "failed"

    # Re-running skips the finished episode and retries the failed one.
    with ScriptedServer([("reply", NARRATIVE), ("reply", SUBTASKS), ("reply", alignment(5))]) as server:
        annotator = VLMAnnotator(_backend(server.url), config)
        summary = annotate_dataset(dataset, annotator, out, context=context, workers=2, progress=False)
    assert (summary.ok, summary.failed, summary.skipped) == (1, 0, 1)
    assert {i: a.status for i, a in read_annotations(out).items()} == {0: "ok", 1: "ok"}
    assert len(out.read_text().splitlines()) == 3


def test_backend_gives_up_after_timeouts_and_on_client_errors():
    with ScriptedServer([("sleep", 0.6, NARRATIVE), ("sleep", 0.6, NARRATIVE), ("status", 400)]) as server:
        backend = _backend(server.url, timeout_s=0.2, attempts=2)
        with pytest.raises(BackendError, match="failed 2 times; last error"):
            backend.complete(VLMRequest("hello"))
        # 400 is not retried.
        with pytest.raises(BackendError, match="HTTP 400"):
            backend.complete(VLMRequest("hello"))
        assert len(server.requests) == 3


def test_rate_limiter_spaces_requests():
    limiter = RateLimiter(requests_per_second=25)
    start = time.monotonic()
    for _ in range(6):
        limiter.acquire()
    assert time.monotonic() - start >= 5 / 25 - 0.01


def lift_context() -> EpisodeContext:
    """A 16-frame lift episode with a grasp at frames 7-9 and two keyframes, 0 and 15."""
    return EpisodeContext(
        episode_index=4,
        instruction="lift the cube",
        num_frames=16,
        fps=10,
        primitives=[PrimitiveSegment("", "grasp", 7, 9)],
        keyframes=[0, 15],
        images=[np.zeros((32, 48, 3), np.uint8), np.full((32, 48, 3), 200, np.uint8)],
    )


def test_transformers_backend_prompt_and_parse_path():
    seen = []

    def generate(messages, images):
        seen.append((messages, images))
        prompt = messages[-1]["content"][-1]["text"]
        if '"narrative"' in prompt:
            return NARRATIVE
        if '"subtasks"' in prompt:
            return SUBTASKS
        return alignment(9, last=15)

    context = lift_context()
    annotator = VLMAnnotator(TransformersBackend(generate=generate))
    annotation = annotator.annotate(context)
    assert annotation.status == "ok" and annotation.plan.startswith("The arm reaches")
    assert [(s.start, s.end) for s in annotation.subtasks] == [(0, 9), (10, 15)]
    messages, images = seen[0]
    assert [p["type"] for p in messages[-1]["content"]] == ["image", "image", "text"]
    assert len(images) == 2 and images[1].size == (48, 32)
    assert "frames 7-9: close the gripper" in messages[-1]["content"][-1]["text"]


def test_reply_parsing_rules():
    assert extract_json('Here you go:\n```json\n{"subtasks": ["a"]}\n``` done') == {"subtasks": ["a"]}
    with pytest.raises(ReplyError, match="no valid JSON"):
        extract_json("{'single': 'quotes'}")
    with pytest.raises(ReplyError, match="distinct"):
        parse_subtasks(json.dumps({"subtasks": ["Grasp", "grasp"]}))
    subtasks = ["Grasp the cube", "Lift the cube"]
    assert len(parse_alignment(alignment(12), subtasks, 24)) == 2
    cases = {
        "start at frame 13": alignment(12).replace('"start": 13', '"start": 14'),
        "last frame 23": alignment(12, last=30),
        "in plan order": alignment(12).replace("Lift the cube", "Raise the cube"),
        "integer frame numbers": alignment(12).replace('"end": 12', '"end": "12"'),
        "the limit is 50": alignment(12).replace("I hold it", "I hold it " + "very " * 50),
        "exactly 2 segments": json.dumps({"segments": []}),
    }
    for message, reply in cases.items():
        with pytest.raises(ReplyError, match=message):
            parse_alignment(reply, subtasks, 24)


def test_prompt_files_are_versioned():
    prompt = load_prompt("alignment", "v1")
    assert prompt.version == "v1" and "$max_words" in prompt.text
    with pytest.raises(ValueError, match="needs the value"):
        prompt.render(instruction="x")
    with pytest.raises(ValueError, match="No prompt file"):
        load_prompt("alignment", "v99")


def video_qa_reply(*pairs) -> str:
    return json.dumps(
        {"pairs": [{"question": q, "answer": a, "asked_at": t, "evidence": e} for q, a, t, e in pairs]}
    )


def test_the_video_qa_stage_asks_for_pairs_about_the_past_and_stores_them(tmp_path):
    from emcot.training.annotation.annotations import AnnotationWriter

    prompts = []

    def generate(messages, images):
        prompt = messages[-1]["content"][-1]["text"]
        prompts.append(prompt)
        if '"narrative"' in prompt:
            return NARRATIVE
        if '"subtasks"' in prompt:
            return SUBTASKS
        if '"segments"' in prompt:
            return alignment(9, last=15)
        if len([p for p in prompts if '"pairs"' in p]) == 1:  # the first reply breaks a rule
            return video_qa_reply(("Where was the cube at first?", "On the left.", 12, 4))
        return video_qa_reply(
            ("Where was the cube at first?", "On the left of the table.", 12, 0),
            ("Was my gripper open at the start?", "Yes, it was open.", 15, 0),
        )

    context = lift_context()
    annotator = VLMAnnotator(TransformersBackend(generate=generate), VLMAnnotatorConfig(video_qa_pairs=2))
    annotation = annotator.annotate(context)
    assert annotation.status == "ok" and annotation.attempts == 5  # 3 stages + 2 tries of the 4th
    assert [(qa.asked_at, qa.evidence) for qa in annotation.video_qa] == [(12, 0), (15, 0)]
    assert annotation.prompt_versions == {
        "narrative": "v1",
        "subtasks": "v1",
        "alignment": "v1",
        "video_qa": "v1",
    }
    asked = [p for p in prompts if '"pairs"' in p]
    assert "up to 2 questions" in asked[0] and "image 2: frame 15" in asked[0]
    assert "evidence 4 must be one of the frames shown, [0, 15]" in asked[1]  # the rejection is fed back
    with AnnotationWriter(tmp_path / "a.jsonl") as writer:
        writer.write(annotation)
    assert read_annotations(tmp_path / "a.jsonl")[4].video_qa == annotation.video_qa  # round trip
    # without the stage nothing is asked and the record keeps no video_qa key
    plain = VLMAnnotator(TransformersBackend(generate=generate)).annotate(context)
    assert (
        plain.video_qa == [] and "video_qa" not in plain.to_dict() and "video_qa" not in plain.prompt_versions
    )


def test_video_qa_reply_and_record_rules():
    from emcot.training.annotation.annotations import EpisodeAnnotation, SubtaskAnnotation, VideoQA
    from emcot.training.annotation.vlm_prompts import parse_video_qa

    good = ("What did I touch first?", "The red block.", 10, 0)
    assert parse_video_qa(video_qa_reply(good), [0, 5], 16)[0] == VideoQA(*good)
    cases = {
        "ending with": video_qa_reply(("What did I touch first", "The red block.", 10, 0)),
        "come after evidence 5": video_qa_reply(("What did I touch first?", "The red block.", 5, 5)),
        "by the last frame 15": video_qa_reply(("What did I touch first?", "The red block.", 16, 0)),
        "the limit is 20": video_qa_reply(("What did I touch first?", "red " * 21, 10, 0)),
        "distinct": video_qa_reply(good, ("what did I touch first?", "Red.", 12, 5)),
        "between 1 and 4": video_qa_reply(),
        "integer frame numbers": video_qa_reply(("What did I touch first?", "The red block.", "10", 0)),
    }
    for message, reply in cases.items():
        with pytest.raises(ReplyError, match=message):
            parse_video_qa(reply, [0, 5], 16)
    record = EpisodeAnnotation(4, 16, "x", subtasks=[SubtaskAnnotation("Do it", 0, 15, "I do it.", 15)])
    record.video_qa = [VideoQA("Where was it?", "Left.", 3, 3)]
    with pytest.raises(ValueError, match="needs 0 <= evidence < asked_at < 16"):
        record.validate()
