"""`blatam bench quality`: the pure answer checks, the prompts, then the real command on the demo model.

The command test runs the CLI in a subprocess: the benchmark starts its own
private Ray + Serve and deletes its app and KV actors after, which must not
touch a Ray instance other tests in this session share.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import typer

from scripts.bench.quality import (
    Answer,
    ask,
    budget,
    judge,
    read_sse,
    request_body,
    resolve_model_spec,
    served_model,
    summarize,
)
from scripts.bench.quality_metrics import (
    RepeatRun,
    check_json,
    common_word_share,
    distinct_n,
    has_sentence,
    is_clean_utf8,
    json_strings,
    longest_repeat_run,
    longest_repeated_ngram,
    text_quality,
    tokens,
)
from scripts.bench.quality_prompts import JSON_MAX_TOKENS, PROMPTS, SCHEMAS, SYSTEMS, QualityPrompt, shares_cached_system

# What a real small instruct model answered (SmolLM2-135M-Instruct, notes/real-model.md) and typical business prose.
ENGLISH = [
    "A small bakery should keep a cash-flow forecast by setting a realistic and achievable budget. Start with "
    "the money you expect to come in each week, then list rent, wages and ingredients.",
    "We are looking for a friendly part-time barista to join our team at Crumb & Co. You will make great "
    "coffee, serve our customers with a smile and help keep the shop clean.\n\nHours: weekends, 7am to 1pm.",
    "**Strengths**\n- Loyal local customers and a strong weekend trade\n- Fresh sourdough baked every day\n"
    "**Weaknesses**\n- Quiet Tuesday afternoons",
    "Net 30 means the customer has 30 days from the invoice date to pay the full amount.",
    "| Month | Income | Costs |\n|---|---|---|\n| March | 28,000 | 19,000 |\nThe forecast shows a surplus in "
    "every month, so you can plan for a new oven in the summer.",
    # SmolLM2's answer to "margins": parallel definitions repeat an 8-token clause, which is still prose.
    "The main difference between gross margin and net margin is how they are calculated.\n\nGross margin is the "
    "profit made by a business after all expenses are accounted for, such as cost of goods sold, labor, and other "
    "expenses. It's calculated by subtracting the cost of goods sold from revenue.\n\nNet margin, on the other "
    "hand, is the profit made by a business after deducting the cost of goods sold from revenue. This is also "
    "known as the profit margin",
]
# SmolLM2's answer to "refund-policy": a whole sentence said twice, the way a small greedy model loops.
REPEATED_SENTENCE = (
    "First, we have a few candles that are made with the finest, most rarest, and most unique ingredients. We have "
    "a few candles that are made with the finest, most rarest, and most unique ingredients. We also have a")


def _random_bytes_text(seed: int, size: int = 300) -> str:
    """What a byte-level model with random weights streams: random bytes, decoded with replacement."""
    return random.Random(seed).randbytes(size).decode("utf-8", errors="replace")


def _demo_like_ascii(seed: int, size: int = 300) -> str:
    """The hardest gibberish: printable ASCII only, with spaces, as if the model never left it."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?-'\"()[]{}#@&*/ "
    return "".join(rng.choice(alphabet + "    ") for _ in range(size))


def _random_letter_words(seed: int, count: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 8)))
                    for _ in range(count)).capitalize() + "."


# --- the text checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ENGLISH, ids=[f"english-{i}" for i in range(len(ENGLISH))])
def test_real_english_passes(text: str):
    quality = text_quality(text)
    assert quality.ok, quality
    assert quality.english and quality.has_sentence and not quality.loop and quality.clean_utf8


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_fail(seed: int):
    quality = text_quality(_random_bytes_text(seed))
    assert not quality.ok and "english" in quality.reasons and "utf8" in quality.reasons


@pytest.mark.parametrize("seed", range(5))
def test_ascii_gibberish_and_random_words_are_not_english(seed: int):
    assert "english" in text_quality(_demo_like_ascii(seed)).reasons
    words_only = text_quality(_random_letter_words(seed))
    assert "english" in words_only.reasons and words_only.common_word_share < 0.25


def test_the_the_the_is_a_loop():
    looped = text_quality("The " + "the " * 60)
    assert looped.loop and "loop" in looped.reasons
    assert looped.distinct_2 < 0.1 and looped.repeat_run.n == 1 and looped.repeat_run.repeats == 61
    # A phrase loop keeps many distinct 2-grams at first; the back-to-back run catches it.
    phrase = "We bake fresh bread every morning. " + "Thank you for your order. " * 3
    assert text_quality(phrase).reasons == ("loop",)
    assert text_quality(phrase).repeat_run == RepeatRun(n=5, repeats=3, start=6)


def test_a_sentence_said_twice_word_for_word_is_a_loop():
    quality = text_quality(REPEATED_SENTENCE)
    assert quality.reasons == ("loop",) and quality.longest_repeated_ngram == 18
    assert quality.distinct_2 > 0.5 and quality.repeat_run.repeats == 1  # what the other measures miss
    assert text_quality(ENGLISH[-1]).longest_repeated_ngram == 8


def test_longest_repeated_ngram():
    assert longest_repeated_ngram(tokens("a b c")) == 0
    assert longest_repeated_ngram(tokens("a b x a b")) == 2
    assert longest_repeated_ngram(tokens("a a a a")) == 3  # overlapping occurrences count
    assert longest_repeated_ngram([]) == 0 and longest_repeated_ngram(["x"]) == 0


def test_distinct_n_and_repeat_run():
    items = tokens("a b a b a b c")
    assert distinct_n(items, 2) == pytest.approx(3 / 6) and distinct_n(items, 3) == pytest.approx(3 / 5)
    assert distinct_n([], 2) == 1.0 and distinct_n(["one"], 2) == 1.0
    assert longest_repeat_run(items) == RepeatRun(n=2, repeats=3, start=0)
    assert longest_repeat_run(tokens("no repeats at all here")).repeats == 1
    assert longest_repeat_run(tokens("very very good")).repeats == 2  # two in a row is still prose


def test_sentence_needs_a_capital_start_and_an_end_or_a_whole_line():
    assert has_sentence("Open the shop at seven.")
    assert has_sentence("- **Offer a loyalty card to regulars**\n- more")  # a whole line, list marker ignored
    assert not has_sentence("open the shop at seven.")  # no capital
    assert not has_sentence("Open the shop at seven")  # the cut last line is no sentence
    assert not has_sentence("Hi there.")  # two words
    assert has_sentence("Revenue was 1.5k last month! Good.")


def test_clean_utf8():
    assert is_clean_utf8("Café: “quotes” — and a euro sign € are fine.\n\tTabs too.")
    assert not is_clean_utf8("bad byte \ufffd here")
    assert not is_clean_utf8("a lone surrogate \udc80")
    assert not is_clean_utf8("a bell \x07")
    assert common_word_share("") == 0.0


def test_a_blank_answer_is_empty_and_nothing_else():
    assert text_quality("").reasons == ("empty",) and text_quality(" \n ").reasons == ("empty",)


def test_too_short_answers_are_not_english():
    quality = text_quality("Yes.")
    assert not quality.english and quality.words == 1


# --- JSON ------------------------------------------------------------------------------------------------


def test_json_valid_invalid_and_schema_breaking():
    schema = SCHEMAS["title_bullets"]
    good = check_json('{"title": "Quiet Tuesdays", "bullets": ["Offer a coffee and cake deal"]}', schema)
    assert good.parses and good.valid and good.error is None
    assert json_strings(good.value) == ["Quiet Tuesdays", "Offer a coffee and cake deal"]
    broken = check_json('{"title": "Quiet Tuesdays", "bullets": ["Offer', schema)
    assert not broken.parses and not broken.valid and broken.error.startswith("not JSON")
    for bad in ('{"title": "x", "bullets": []}',  # minItems
                '{"title": "x", "bullets": ["a", "b", "c", "d", "e", "f"]}',  # maxItems
                '{"title": "x"}',  # required
                '{"title": 3, "bullets": ["a"]}',  # type
                '{"title": "x", "bullets": ["a"], "extra": 1}'):  # additionalProperties
        checked = check_json(bad, schema)
        assert checked.parses and not checked.valid and checked.error, bad
    assert "bullets" in check_json('{"title": "x", "bullets": [1]}', schema).error
    assert check_json('{"subject": "Welcome", "body": "See you on Monday."}', SCHEMAS["email"]).valid


def test_a_broken_schema_is_the_benchmarks_bug():
    import jsonschema

    with pytest.raises(jsonschema.SchemaError):
        check_json("{}", {"type": "no-such-type"})


# --- the prompts and the judging -------------------------------------------------------------------------


def test_twenty_prompts_with_shared_system_prompts_and_json():
    assert len(PROMPTS) == 20 and len({p.id for p in PROMPTS}) == 20
    json_prompts = [p for p in PROMPTS if p.kind == "json"]
    assert len(json_prompts) == 5 and all(p.response_format()["type"] == "json_schema" for p in json_prompts)
    shared = shares_cached_system()
    assert sum(shared.values()) >= 8  # every later prompt of each of the three shared system prompts
    for system in SYSTEMS.values():
        assert len(system) >= 600  # several 64-token blocks, whatever the tokenizer
    with pytest.raises(ValueError):
        QualityPrompt("x", "json", "no schema")
    with pytest.raises(ValueError):
        QualityPrompt("x", "chat", "q", system_id="nope")


def test_request_body_is_greedy_and_streams_usage():
    chat, as_json = PROMPTS[0], next(p for p in PROMPTS if p.kind == "json")
    body = request_body(chat, model="m", max_tokens=96, stream=True)
    assert body["temperature"] == 0 and body["max_tokens"] == 96 and body["model"] == "m"
    assert body["messages"][0]["role"] == "system" and body["stream_options"] == {"include_usage": True}
    assert "response_format" not in body
    json_body = request_body(as_json, model=None, max_tokens=96, stream=False)
    assert json_body["max_tokens"] == JSON_MAX_TOKENS == budget(as_json, 96) and "stream" not in json_body
    assert json_body["response_format"]["json_schema"]["schema"] == as_json.schema


def test_read_sse_takes_text_ttft_and_usage():
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": " there."}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 3,
                                  "prompt_tokens_details": {"cached_tokens": 64}}},
    ]
    lines = [line for e in events for line in (f"data: {json.dumps(e)}", "")] + ["data: [DONE]"]
    answer = Answer()
    read_sse(iter(lines), answer, started=0.0, deadline=float("inf"))
    assert answer.text == "Hello there." and answer.finish_reason == "stop" and answer.ttft_ms is not None
    assert (answer.prompt_tokens, answer.completion_tokens, answer.cached_tokens) == (100, 3, 64)
    errored = Answer()
    read_sse(iter(['data: {"error": {"message": "overloaded"}}']), errored, started=0.0, deadline=float("inf"))
    assert errored.error == "error event: overloaded"


def test_judge_and_summary():
    chat, as_json = PROMPTS[1], next(p for p in PROMPTS if p.kind == "json")
    good = judge(chat, Answer(text=ENGLISH[1], prompt_tokens=200, completion_tokens=50, cached_tokens=128,
                              ttft_ms=100.0, total_ms=1100.0), max_tokens=96, cache_expected=True)
    assert good["ok"] and good["cached_share"] == pytest.approx(0.64) and good["tokens_per_s"] == pytest.approx(50 / 1.1)
    assert good["decode_tokens_per_s"] == pytest.approx(49 / 1.0) and good["text"] == ENGLISH[1]
    gibberish = judge(as_json, Answer(text='{"title": "x\\u00ff", "bullets": ["qz"]}', prompt_tokens=90,
                                      completion_tokens=20, total_ms=500.0), max_tokens=96, cache_expected=False)
    assert gibberish["json"]["valid"] and not gibberish["ok"] and "english" in gibberish["reasons"]
    cut = judge(as_json, Answer(text='{"title": "Plan', error="HTTP 503: busy", total_ms=5.0), max_tokens=96,
                cache_expected=False)
    assert cut["reasons"][-2:] == ["json", "error"] and cut["ttft_ms"] is None
    summary = summarize([good, gibberish, cut])
    assert summary["prompts"] == 3 and summary["ok"] == 1 and summary["json_valid"] == 1 and summary["json_prompts"] == 2
    assert summary["cached_share"] == pytest.approx(128 / 290) and summary["cached_share_shared_system"] == pytest.approx(0.64)
    assert summary["errors"] == 1 and summary["readable"] == 1


def _fake_server(answer: str = "Net 30 means you pay within thirty days.") -> httpx.MockTransport:
    """An OpenAI-style server: /models, streamed and plain chat completions, a 400 for an unknown model."""
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        body = json.loads(request.content)
        if body.get("model") != "fake-model":
            return httpx.Response(404, json={"error": {"message": "The model `x` does not exist."}})
        usage = {"prompt_tokens": 40, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 32}}
        if not body.get("stream"):
            return httpx.Response(200, json={"choices": [{"message": {"content": answer}, "finish_reason": "stop"}],
                                             "usage": usage})
        chunks = [{"choices": [{"delta": {"content": answer[:8]}, "finish_reason": None}]},
                  {"choices": [{"delta": {"content": answer[8:]}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": usage}]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_ask_over_http(stream: bool):
    prompt = next(p for p in PROMPTS if p.id == "net-30")
    with httpx.Client(transport=_fake_server()) as client:
        assert served_model(client, "http://llm/v1") == "fake-model"
        answer = ask(client, "http://llm/v1", request_body(prompt, model="fake-model", max_tokens=96, stream=stream),
                     timeout_s=10)
        assert answer.error is None and answer.text == "Net 30 means you pay within thirty days."
        assert (answer.prompt_tokens, answer.cached_tokens, answer.finish_reason) == (40, 32, "stop")
        assert (answer.ttft_ms is not None) == stream and answer.total_ms > 0
        refused = ask(client, "http://llm/v1", request_body(prompt, model="other", max_tokens=96, stream=stream),
                      timeout_s=10)
        assert refused.error == "HTTP 404: The model `x` does not exist." and refused.text == ""


def test_model_spec():
    assert resolve_model_spec(None) is None and resolve_model_spec("demo") is None
    with pytest.raises(typer.BadParameter):
        resolve_model_spec("/no/such/model/folder")


# --- the command, end to end on the demo model -----------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_bench_quality_command_on_the_demo_model(tmp_path: Path):
    out = tmp_path / "quality.json"
    done = subprocess.run([sys.executable, "-m", "scripts.cli", "bench", "quality", "--model", "demo",
                           "--max-tokens", "48", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "answer quality" in done.stdout and "tokens/s" in done.stdout
    result = json.loads(out.read_text())
    assert result["benchmark"] == "quality" and result["model"].startswith("blatam-demo-llama") and result["url"] is None
    assert set(result) >= {"config", "thresholds", "systems", "schemas", "summary", "results"}
    rows = result["results"]
    assert [r["id"] for r in rows] == [p.id for p in PROMPTS]
    for row in rows:
        # The demo's random bytes often decode to nothing at all: text may be empty, never missing.
        assert row["error"] is None and isinstance(row["text"], str) and row["finish_reason"] in ("stop", "length")
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["total_ms"] > 0
        assert row["ttft_ms"] is None or 0 < row["ttft_ms"] <= row["total_ms"]
        if row["kind"] == "json":
            assert row["json"]["valid"] and row["text"].startswith("{") and row["ttft_ms"] is not None
        assert set(row["quality"]) >= {"english", "has_sentence", "distinct_2", "distinct_3", "repeat_run", "loop", "ok"}
        if row["cache_expected"]:  # a later prompt of a shared system prompt starts from cached blocks
            assert row["cached_tokens"] > 0, row["id"]
    summary = result["summary"]
    assert summary["prompts"] == 20 and summary["json_prompts"] == 5
    assert summary["json_valid"] == 5 and summary["json_valid_share"] == 1.0  # grammar-enforced, even random weights
    assert summary["cached_tokens"] > 0 and summary["cached_share_shared_system"] > 0.5
    # The demo model has random weights: its answers are not English, which is what the check is for.
    assert summary["readable"] == 0 and summary["ok"] == 0
