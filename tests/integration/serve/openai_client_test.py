#!/usr/bin/env python3
"""The official OpenAI Python client (PyPI `openai`, pinned in
tests/integration/requirements.txt, installed into .venv by scripts/setup.sh)
talks to `herd serve`. It covers completions and chat completions, streaming
and not, and a rejected request raised as the client's BadRequestError.

The model is a Hugging Face directory the test writes: a Mixtral config (2
layers, 4 experts, hidden 64) with random f32 weights sized to the committed
llama-style tokenizer.json, plus a tokenizer_config.json that carries a
Mistral chat template. Text goes in and text comes out.
"""

import array
import copy
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import urllib.request

import serve_harness as h

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TOKENIZER_DIR = os.path.join(ROOT, "tests/data/tokenizers/hf/llama-style")
CONFIG = os.path.join(ROOT, "tests/data/hf-reference/mixtral/config.json")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")


def vocab_size(tokenizer):
    ids = list(tokenizer["model"]["vocab"].values())
    ids += [t["id"] for t in tokenizer.get("added_tokens", [])]
    return max(ids) + 1


def write_model(directory, seed):
    """A random-weight Mixtral directory whose vocabulary is the tokenizer's."""
    with open(os.path.join(TOKENIZER_DIR, "tokenizer.json")) as f:
        tokenizer = json.load(f)
    with open(CONFIG) as f:
        config = json.load(f)
    vocab = vocab_size(tokenizer)
    config["vocab_size"] = vocab
    config["max_position_embeddings"] = 1024  # room for tool descriptions
    hidden = config["hidden_size"]
    ffn = config["intermediate_size"]
    head_dim = config["head_dim"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden],
              "model.norm.weight": [hidden]}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = [hidden]
        shapes[p + "post_attention_layernorm.weight"] = [hidden]
        shapes[p + "self_attn.q_proj.weight"] = [q, hidden]
        shapes[p + "self_attn.k_proj.weight"] = [kv, hidden]
        shapes[p + "self_attn.v_proj.weight"] = [kv, hidden]
        shapes[p + "self_attn.o_proj.weight"] = [hidden, q]
        shapes[p + "block_sparse_moe.gate.weight"] = [config["num_local_experts"], hidden]
        for e in range(config["num_local_experts"]):
            x = f"{p}block_sparse_moe.experts.{e}."
            shapes[x + "w1.weight"] = [ffn, hidden]
            shapes[x + "w2.weight"] = [hidden, ffn]
            shapes[x + "w3.weight"] = [ffn, hidden]
    rng = random.Random(seed)
    header = {}
    blobs = []
    offset = 0
    for name in sorted(shapes):
        count = 1
        for d in shapes[name]:
            count *= d
        if name.endswith("norm.weight"):
            values = array.array("f", [1.0] * count)
        else:
            values = array.array("f", (rng.gauss(0.0, 0.1) for _ in range(count)))
        data = values.tobytes()
        header[name] = {"dtype": "F32", "shape": shapes[name],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    shutil.copy(os.path.join(TOKENIZER_DIR, "tokenizer.json"), directory)
    with open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json")) as f:
        tokenizer_config = json.load(f)
    tokenizer_config["chat_template"] = MISTRAL_TEMPLATE
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f)


def log_softmax_row(row, token):
    top = max(row)
    return row[token] - top - math.log(sum(math.exp(v - top) for v in row))


def generate_logits(args, model_dir, prompt_ids, new):
    """`herd generate --dump-logits` on the prompt ids: the greedy ids, and a
    function giving the logits row of a position."""
    logits_path = os.path.join(h.make_temp_dir("herd-logits-"), "logits.f32")
    cmd = [args.herd, "generate", "--model", model_dir, "--prompt-ids",
           ",".join(map(str, prompt_ids)), "--max-new-tokens", str(new), "--threads", "1",
           "--dump-logits", logits_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    h.check(proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr}")
    values = array.array("f")
    with open(logits_path, "rb") as f:
        values.frombytes(f.read())
    vocab = len(values) // (len(prompt_ids) + new)
    return ([int(x) for x in proc.stdout.split(",")],
            lambda position: values[position * vocab:(position + 1) * vocab])


def check_logprobs(client, args, model_dir):
    """Greedy completions with logprobs against the logits `herd generate
    --dump-logits` writes for the same prompt ids: each token's log
    probability is the log softmax of its row, the most likely of its top
    entries; the stream carries the same entries; chat's content entries
    have their tokens' bytes."""
    prompt_ids = [1, 100, 200, 300, 400, 500]
    new = 8
    done = client.completions.create(model="tiny-mixtral", prompt=prompt_ids, max_tokens=new,
                                     temperature=0, logprobs=3)
    lp = done.choices[0].logprobs
    h.check(lp is not None and len(lp.tokens) == done.usage.completion_tokens == new,
            f"completion logprobs {lp}")
    ids = done.choices[0].model_extra["token_ids"]
    generated, row = generate_logits(args, model_dir, prompt_ids, new)
    h.check(generated == ids, f"generate gave {generated}, the server {ids}")
    for i, token in enumerate(ids):
        want = log_softmax_row(row(len(prompt_ids) - 1 + i), token)
        got = lp.token_logprobs[i]
        h.check(abs(got - want) < 1e-4, f"token {i} ({token}): logprob {got}, generate's {want}")
        top = lp.top_logprobs[i]
        h.check(len(top) == 3 and abs(max(top.values()) - got) < 1e-6,
                f"token {i}: top {top} (greedy: the sampled token is the most likely)")
        h.check(lp.tokens[i] in top, f"token {i}: {lp.tokens[i]!r} not in its top {top}")
    h.check(lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset),
            f"text_offset {lp.text_offset}")
    h.log(f"completion logprobs match generate's logits: {lp.token_logprobs}")

    # The prompt's log probabilities, as lm-eval's loglikelihood requests ask
    # for them (echo, logprobs 1, max_tokens 1): prompt token p (p >= 1) has
    # the log softmax of row p - 1; token 0 has none.
    echoed = client.completions.create(model="tiny-mixtral", prompt=prompt_ids, max_tokens=1,
                                       temperature=0, logprobs=1, echo=True)
    elp = echoed.choices[0].logprobs
    h.check(len(elp.tokens) == len(prompt_ids) + 1 and elp.token_logprobs[0] is None
            and elp.top_logprobs[0] is None, f"echoed logprobs {elp}")
    for p in range(1, len(prompt_ids)):
        want = log_softmax_row(row(p - 1), prompt_ids[p])
        got = elp.token_logprobs[p]
        h.check(abs(got - want) < 1e-4, f"prompt token {p}: logprob {got}, generate's {want}")
        h.check(1 <= len(elp.top_logprobs[p]) <= 2, f"prompt token {p}: {elp.top_logprobs[p]}")
    h.check(abs(elp.token_logprobs[-1] - lp.token_logprobs[0]) < 1e-6,
            f"the generated token after the echo: {elp.token_logprobs[-1]} vs "
            f"{lp.token_logprobs[0]}")
    h.log(f"echoed prompt logprobs match generate's logits: {elp.token_logprobs}")

    # max_tokens 0 scores the prompt alone (OpenAI's legacy loglikelihood form).
    scored = client.completions.create(model="tiny-mixtral", prompt=prompt_ids, max_tokens=0,
                                       temperature=0, logprobs=1, echo=True)
    slp = scored.choices[0].logprobs
    h.check(scored.usage.completion_tokens == 0 and scored.choices[0].finish_reason == "length"
            and slp.token_logprobs == elp.token_logprobs[:len(prompt_ids)],
            f"max_tokens 0: {scored.choices[0]}, usage {scored.usage}")

    streamed = []
    for chunk in client.completions.create(model="tiny-mixtral", prompt=prompt_ids,
                                           max_tokens=new, temperature=0, logprobs=3,
                                           stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.token_logprobs
    h.check(streamed == lp.token_logprobs, f"streamed logprobs {streamed} vs {lp.token_logprobs}")

    messages = [{"role": "user", "content": "Hello"}]
    chat = client.chat.completions.create(model="tiny-mixtral", messages=messages, max_tokens=6,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    h.check(len(content) == chat.usage.completion_tokens, f"chat logprobs {content}")
    for entry in content:
        h.check(len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob == entry.logprob,
                f"chat entry {entry}")
        if "\ufffd" not in entry.token:
            h.check(bytes(entry.bytes) == entry.token.encode(), f"chat entry bytes {entry}")
    plain = client.chat.completions.create(model="tiny-mixtral", messages=messages, max_tokens=2,
                                           temperature=0)
    h.check(plain.choices[0].logprobs is None, f"logprobs without asking: {plain.choices[0]}")


def check_prefix_cache(client, args, model_dir, port):
    """The same 40-token prompt twice: the second reuses its two whole blocks
    of 16 (usage.prompt_tokens_details.cached_tokens, the Prometheus
    counters), and both give generate's tokens and log probabilities."""
    prompt_ids = [(37 * i + 11) % 600 for i in range(40)]
    new = 6
    ids, row = generate_logits(args, model_dir, prompt_ids, new)
    for want_cached in (0, 32):
        done = client.completions.create(model="tiny-mixtral", prompt=prompt_ids, max_tokens=new,
                                         temperature=0, logprobs=0)
        details = done.usage.prompt_tokens_details
        h.check(details is not None and details.cached_tokens == want_cached,
                f"usage {done.usage}: want {want_cached} cached prompt tokens")
        got_ids = done.choices[0].model_extra["token_ids"]
        h.check(got_ids == ids, f"with {want_cached} cached: {got_ids}, generate {ids}")
        for i, token in enumerate(got_ids):
            want = log_softmax_row(row(len(prompt_ids) - 1 + i), token)
            got = done.choices[0].logprobs.token_logprobs[i]
            h.check(abs(got - want) < 1e-4,
                    f"with {want_cached} cached, token {i}: logprob {got}, generate's {want}")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                     timeout=30).read().decode()
    hits = [line for line in metrics.splitlines()
            if line.startswith("herd:prefix_cache_hits_total")]
    h.check(len(hits) == 1 and float(hits[0].split()[-1]) >= 32, f"prefix cache hits: {hits}")
    h.log(f"prefix cache: the second request reused 32 of {len(prompt_ids)} prompt tokens, "
          "same logprobs as generate")


def check_choices(client, prompt, greedy_text, messages, chat_text):
    """`n` choices and a batch of prompts through the client: choice i answers
    prompt i / n (greedy: each is that prompt's text alone), streamed choices
    arrive by index, and the usage counts each prompt once."""
    other = "A second prompt"
    alone = client.completions.create(model="tiny-mixtral", prompt=other, max_tokens=12,
                                      temperature=0)
    batch = client.completions.create(model="tiny-mixtral", prompt=[prompt, other], n=2,
                                      max_tokens=12, temperature=0)
    h.check([c.index for c in batch.choices] == [0, 1, 2, 3], f"choices {batch.choices}")
    want = [greedy_text, greedy_text, alone.choices[0].text, alone.choices[0].text]
    h.check([c.text for c in batch.choices] == want,
            f"batch texts {[c.text for c in batch.choices]}, expected {want}")
    h.check(batch.usage.prompt_tokens == alone.usage.prompt_tokens +
            client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=1,
                                      temperature=0).usage.prompt_tokens,
            f"batch usage {batch.usage}: each prompt counts once")
    h.check(batch.usage.completion_tokens == sum(
        len(c.model_extra["token_ids"]) for c in batch.choices), f"batch usage {batch.usage}")

    contents = {}
    roles = {}
    usage = None
    for chunk in client.chat.completions.create(model="tiny-mixtral", messages=messages,
                                                max_tokens=10, temperature=0, n=2, stream=True,
                                                stream_options={"include_usage": True}):
        for c in chunk.choices:
            contents[c.index] = contents.get(c.index, "") + (c.delta.content or "")
            if c.delta.role:
                roles[c.index] = c.delta.role
        if chunk.usage is not None:
            usage = chunk.usage
    h.check(contents == {0: chat_text, 1: chat_text} and roles == {0: "assistant",
                                                                  1: "assistant"},
            f"n=2 streamed chat: {contents}, roles {roles}; greedy {chat_text!r}")
    h.check(usage is not None and usage.completion_tokens > 0, f"n=2 chat usage {usage}")
    sampled = client.chat.completions.create(model="tiny-mixtral", messages=messages,
                                             max_tokens=10, n=3, seed=11)
    h.check(len(sampled.choices) == 3 and len({c.message.content for c in sampled.choices}) > 1,
            f"3 seeded chat samples: {[c.message.content for c in sampled.choices]}")
    h.log(f"n and batches: {len(batch.choices)} choices of 2 prompts, chat n=2 streamed by index")


def check_tokenize(port, prompt, prompt_tokens):
    """/tokenize gives the ids a completion of the prompt counts, and
    /detokenize turns them back into the prompt."""
    def post(path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    tokens = post("/tokenize", {"prompt": prompt})
    h.check(tokens["count"] == len(tokens["tokens"]) == prompt_tokens,
            f"/tokenize {tokens}: the completion counted {prompt_tokens} prompt tokens")
    plain = post("/tokenize", {"prompt": prompt, "add_special_tokens": False})["tokens"]
    text = post("/detokenize", {"tokens": plain})["prompt"]
    h.check(text == prompt, f"/detokenize of {plain} gave {text!r}, not {prompt!r}")


def check_json_mode(client, openai, messages):
    """JSON mode through the client: each reply starts an object, and one
    that stopped is a whole object."""
    replies = client.chat.completions.create(model="tiny-mixtral", messages=messages,
                                             max_tokens=48, n=4, seed=3,
                                             response_format={"type": "json_object"})
    for c in replies.choices:
        text = c.message.content
        h.check(text.startswith("{"), f"JSON mode reply {c.index}: {text!r}")
        if c.finish_reason == "stop":
            h.check(isinstance(json.loads(text), dict), f"JSON mode reply {c.index}: {text!r}")
    h.log(f"JSON mode: {[c.message.content[:24] for c in replies.choices]}")


def check_structured_outputs(client, openai, messages):
    """Structured outputs as the client makes them: chat.completions.parse
    with a pydantic model (the client sends its strict JSON schema: $defs,
    $ref, anyOf with null, enums, maxLength, maxItems) returns replies that
    pydantic validates into the model; every value is bounded, so each reply
    closes. The same schema as vLLM's guided_json on completions; vLLM's
    guided_choice and guided_regex; a keyword outside the subset is a
    BadRequestError that names it."""
    from typing import List, Literal, Optional

    import pydantic

    class Owner(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=8)
        verified: bool

    class Pet(pydantic.BaseModel):
        kind: Literal["cat", "dog", "fish"]
        name: str = pydantic.Field(max_length=8)
        indoor: Optional[bool]
        tags: List[Literal["cute", "old"]] = pydantic.Field(max_length=2)
        owner: Optional[Owner]

    parsed = client.chat.completions.parse(model="tiny-mixtral", messages=messages,
                                           max_tokens=400, n=3, seed=11, response_format=Pet)
    for c in parsed.choices:
        h.check(c.finish_reason == "stop", f"parsed reply {c.index}: {c.finish_reason} "
                                           f"{c.message.content!r}")
        h.check(isinstance(c.message.parsed, Pet), f"parsed reply {c.index}: {c.message!r}")
        # The properties come in the model's order.
        keys = list(json.loads(c.message.content).keys())
        h.check(keys == list(Pet.model_fields), f"reply {c.index} keys {keys}")
    h.log(f"structured outputs: {[c.message.content for c in parsed.choices]}")

    schema = Pet.model_json_schema()
    for extra in ({"guided_json": schema}, {"guided_json": json.dumps(schema)}):
        done = client.completions.create(model="tiny-mixtral", prompt="A pet:", max_tokens=400,
                                         seed=2, extra_body=extra)
        text = done.choices[0].text
        h.check(done.choices[0].finish_reason == "stop", f"guided_json: {text!r}")
        Pet.model_validate_json(text)
    # Tool calls: a named function through parse() with a pydantic model
    # (the client reads parsed_arguments back), and "required" with one call.
    # Compact JSON (vLLM's guided_whitespace_pattern "") keeps them short.
    class GetWeather(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=8)
        unit: Literal["C", "F"]

    compact = {"guided_whitespace_pattern": ""}
    called = client.chat.completions.parse(
        model="tiny-mixtral", messages=messages, max_tokens=64, seed=5, extra_body=compact,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice={"type": "function", "function": {"name": "GetWeather"}})
    call = called.choices[0].message.tool_calls[0]
    h.check(called.choices[0].finish_reason == "tool_calls" and
            isinstance(call.function.parsed_arguments, GetWeather),
            f"named tool call: {called.choices[0]!r}")
    tools = [{"type": "function", "function": {
        "name": "get_time", "parameters": {"type": "object", "properties": {
            "zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
            "additionalProperties": False}}}, openai.pydantic_function_tool(GetWeather)]
    required = client.chat.completions.create(
        model="tiny-mixtral", messages=messages, max_tokens=64, seed=6, extra_body=compact,
        tools=tools, tool_choice="required", parallel_tool_calls=False)
    calls = required.choices[0].message.tool_calls
    h.check(required.choices[0].finish_reason == "tool_calls" and len(calls) == 1 and
            calls[0].function.name in ("get_time", "GetWeather") and
            isinstance(json.loads(calls[0].function.arguments), dict),
            f"required tool call: {required.choices[0]!r}")
    h.log(f"tool calls: {call.function.arguments} / {calls[0].function.name} "
          f"{calls[0].function.arguments}")
    # tool_choice "auto": the reply's <tool_call> block (forced with
    # guided_regex, as a trained model would write it) comes back as a call.
    forced = (r'Checking\.\n<tool_call>\n\{"name": "get_time", "arguments": '
              r'\{"zone": "UTC"\}\}\n</tool_call>')
    auto = client.chat.completions.create(model="tiny-mixtral", messages=messages, max_tokens=200,
                                          tools=tools, extra_body={"guided_regex": forced})
    auto_calls = auto.choices[0].message.tool_calls
    h.check(auto.choices[0].finish_reason == "tool_calls" and auto_calls is not None and
            auto_calls[0].function.name == "get_time" and
            json.loads(auto_calls[0].function.arguments) == {"zone": "UTC"} and
            auto.choices[0].message.content == "Checking.",
            f"auto tool call: {auto.choices[0]!r}")

    # vLLM's guided_choice and guided_regex, through extra_body.
    options = ["positive", "negative", "neutral"]
    voted = client.chat.completions.create(model="tiny-mixtral", messages=messages, max_tokens=8,
                                           n=3, seed=4, extra_body={"guided_choice": options})
    for c in voted.choices:
        h.check(c.message.content in options and c.finish_reason == "stop",
                f"guided_choice reply {c.index}: {c.message.content!r} ({c.finish_reason})")
    dated = client.completions.create(model="tiny-mixtral", prompt="Date:", max_tokens=32, seed=1,
                                      extra_body={"guided_regex": r"\d{4}-\d{2}-\d{2}"})
    h.check(re.fullmatch(r"\d{4}-\d{2}-\d{2}", dated.choices[0].text) is not None and
            dated.choices[0].finish_reason == "stop",
            f"guided_regex: {dated.choices[0].text!r} ({dated.choices[0].finish_reason})")
    try:
        client.chat.completions.create(
            model="tiny-mixtral", messages=messages, max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {
                    "site": {"type": "string", "format": "uri"}}}}})
        raise h.TestFailure("a schema with format uri was accepted")
    except openai.BadRequestError as e:
        h.check("'format' \"uri\" is not supported" in str(e) and "response_format" in str(e),
                f"the 400 does not name the keyword and response_format: {e}")


def test(args):
    try:
        import openai
    except ImportError as e:
        raise h.TestFailure(f"the openai package is missing ({e}): run scripts/setup.sh, which "
                            "installs tests/integration/requirements.txt into .venv")
    model_dir = h.make_temp_dir("herd-openai-model-")
    write_model(model_dir, args.seed)
    server_args = copy.copy(args)
    server_args.model = model_dir
    with h.Server(server_args, extra_args=["--model-name", "tiny-mixtral"]) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused",
                               max_retries=0, timeout=60)
        models = [m.id for m in client.models.list().data]
        h.check(models == ["tiny-mixtral"], f"models.list() gave {models}")

        # Completions: a text prompt, greedy; the stream carries the same text.
        prompt = "The quick brown fox"
        done = client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=12,
                                         temperature=0)
        choice = done.choices[0]
        h.log(f"completion: {choice.text!r} ({choice.finish_reason})")
        h.check(choice.finish_reason in ("length", "stop"), f"finish_reason {choice.finish_reason}")
        h.check(done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 0,
                f"usage {done.usage}")
        h.check(done.usage.total_tokens ==
                done.usage.prompt_tokens + done.usage.completion_tokens, f"usage {done.usage}")
        streamed = ""
        finish = None
        for chunk in client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=12,
                                               temperature=0, stream=True):
            if chunk.choices:
                streamed += chunk.choices[0].text or ""
                finish = chunk.choices[0].finish_reason or finish
        h.check(streamed == choice.text,
                f"streamed completion {streamed!r} differs from {choice.text!r}")
        h.check(finish == choice.finish_reason, f"streamed finish_reason {finish}")

        # Chat completions, through the model's chat template.
        messages = [{"role": "user", "content": "Hello, who are you?"}]
        chat = client.chat.completions.create(model="tiny-mixtral", messages=messages,
                                              max_tokens=10, temperature=0)
        message = chat.choices[0].message
        h.log(f"chat: {message.content!r} ({chat.choices[0].finish_reason})")
        h.check(message.role == "assistant", f"chat role {message.role}")
        h.check(chat.object == "chat.completion", f"chat object {chat.object}")
        h.check(chat.usage.completion_tokens > 0, f"chat usage {chat.usage}")
        content = ""
        roles = set()
        for chunk in client.chat.completions.create(model="tiny-mixtral", messages=messages,
                                                    max_tokens=10, temperature=0, stream=True,
                                                    stream_options={"include_usage": True}):
            for c in chunk.choices:
                content += c.delta.content or ""
                if c.delta.role:
                    roles.add(c.delta.role)
            if chunk.usage is not None:
                h.check(chunk.usage.completion_tokens == chat.usage.completion_tokens,
                        f"streamed usage {chunk.usage} vs {chat.usage}")
        h.check(content == message.content,
                f"streamed chat {content!r} differs from {message.content!r}")
        h.check(roles == {"assistant"}, f"streamed roles {roles}")

        check_logprobs(client, args, model_dir)
        check_prefix_cache(client, args, model_dir, server.port)
        check_choices(client, prompt, choice.text, messages, message.content)
        check_tokenize(server.port, prompt, done.usage.prompt_tokens)
        check_json_mode(client, openai, messages)
        check_structured_outputs(client, openai, messages)

        # vLLM's sampling extensions travel in extra_body: top_k 1 (or min_p 1)
        # at temperature 1 leaves only the most likely token, the greedy text.
        for extra in ({"top_k": 1}, {"min_p": 1.0}):
            narrowed = client.completions.create(model="tiny-mixtral", prompt=prompt,
                                                 max_tokens=12, temperature=1.0, seed=5,
                                                 extra_body=extra)
            h.check(narrowed.choices[0].text == choice.text,
                    f"{extra} at temperature 1 gave {narrowed.choices[0].text!r}, greedy "
                    f"{choice.text!r}")
        # A frequency penalty of 2 (past any logit gap of this random model)
        # forbids repeats, which the greedy output has.
        greedy_ids = done.choices[0].model_extra["token_ids"]
        penalized = client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=12,
                                              temperature=0, frequency_penalty=2.0)
        penalized_ids = penalized.choices[0].model_extra["token_ids"]
        h.check(len(set(greedy_ids)) < len(greedy_ids) and
                len(set(penalized_ids)) == len(penalized_ids),
                f"greedy {greedy_ids}, with frequency_penalty 2: {penalized_ids}")
        # A logit bias of 100 on one token makes it the greedy choice every time.
        favoured = greedy_ids[0] + 1
        biased = client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=4,
                                           temperature=0, logit_bias={str(favoured): 100})
        h.check(biased.choices[0].model_extra["token_ids"] == [favoured] * 4,
                f"logit_bias {favoured}: 100 gave {biased.choices[0].model_extra['token_ids']}")
        wide = client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=12,
                                         temperature=1.0, seed=5, extra_body={"top_k": 50})
        h.check(wide.choices[0].text != choice.text,
                "top_k 50 at temperature 1 gave the greedy text: is top_k ignored?")

        # A bad request comes back as the client's typed error, with the reason.
        try:
            client.completions.create(model="tiny-mixtral", prompt=prompt, max_tokens=-1)
            raise h.TestFailure("max_tokens=-1 was accepted")
        except openai.BadRequestError as e:
            h.check("max_tokens" in str(e), f"the 400 does not name max_tokens: {e}")
        server.stop()


if __name__ == "__main__":
    h.run_test(test, __doc__)
