#!/usr/bin/env python3
"""Writes the Hugging Face tokenizer.json test data that tokenizer_hf_test.cc reads.

Builds four small tokenizers with the real `tokenizers` library, trained on a
small English text, and records the ids it produces for test strings:

  byte-level-split/  BPE, NFC normalizer, Split(regex) + ByteLevel(use_regex=false)
                     pre-tokenizers, added tokens (special and not), ChatML template
  byte-level-gpt2/   BPE, Lowercase, ByteLevel(add_prefix_space, use_regex) and
                     Digits, a TemplateProcessing post-processor that adds BOS,
                     an added token with lstrip/rstrip
  metaspace/         BPE with byte fallback, Metaspace(prepend_scheme=first)
  llama-style/       the same model with Llama-2's Prepend/Replace normalizers,
                     no pre-tokenizer, Replace/ByteFallback/Fuse/Strip decoder

Each directory gets tokenizer.json, tokenizer_config.json and expected.json.
Not run in CI (the C++ test needs no Python). To regenerate:

  python3 -m venv /tmp/hf-venv && /tmp/hf-venv/bin/pip install tokenizers==0.21.1
  /tmp/hf-venv/bin/python tests/data/tokenizers/hf/generate.py
"""
import json
import os

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

PINNED = "0.21.1"
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "ggml-vocab-gpt-2.gguf.inp")

CORPUS = """
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun while the
fox runs into the forest. Tokenizers turn text into numbers, and numbers back into
text. A good tokenizer gives the same ids every time: that is what this test checks.
Hello world! Hello, World? It's 2024 and we're testing 12345 tokens; they'll work.
Mixture-of-Experts models route every token to a few experts. Each expert is a small
feed-forward network, and the router picks the top two for every token.
Café, naïve, résumé, Äpfel, Straße. Привет, мир! 你好，世界。 こんにちは 🙂 🚀
def main():\n    return 0\n\nif __name__ == "__main__":\n    main()
"""

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

EXTRA = [
    "<|im_start|>user\nHello there<|im_end|>\n",
    "text<|endoftext|>more text",
    "a <custom> b",
    "x<custom>y <custom>",
    "Cafe\u0301 vs Caf\u00e9",            # decomposed and precomposed e-acute
    "ＦＵＬＬ width ｔｅｘｔ 123",
    "The YEAR 2024 had 366 days; 1234567 digits.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nmixed",
    "emoji 🙂🚀 and CJK 你好",
    "unknown chars: \u2603 \u0416 \U0001F9EA",
    "<s> looks special </s>",
    "",
]


def test_strings():
    with open(FIXTURE, encoding="utf-8") as f:
        fixture = f.read().split("\n__ggml_vocab_test__\n")[:-1]
    return fixture + EXTRA


def train_bpe(pre_tokenizer, vocab_size, special, normalizer=None, byte_level=False):
    tok = Tokenizer(models.BPE(unk_token=None))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    kwargs = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()} if byte_level else {}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  show_progress=False, **kwargs)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    return tok


def add_byte_fallback(tok, unk):
    """Adds <0x00>..<0xFF> and an unknown token to a trained BPE, with byte_fallback."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for b in range(256):
        name = "<0x%02X>" % b
        if name not in vocab:
            vocab[name] = next_id
            next_id += 1
    if unk not in vocab:
        vocab[unk] = next_id
    data["model"]["byte_fallback"] = True
    data["model"]["unk_token"] = unk
    return data


def write(name, tok, config, note):
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str(pretty=False))
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
    cases = []
    for text in test_strings():
        ids = tok.encode(text, add_special_tokens=False).ids
        with_special = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({
            "text": text,
            "ids": ids,                          # special tokens in the text recognised
            "ids_special_as_text": ids_plain,    # special tokens in the text as plain text
            "ids_with_bos": with_special,        # add_special_tokens=True (post-processor)
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    expected = {"generator": "tests/data/tokenizers/hf/generate.py",
                "tokenizers_version": tokenizers.__version__, "note": note, "cases": cases}
    with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=0)


def main():
    assert tokenizers.__version__ == PINNED, f"need tokenizers=={PINNED}, have {tokenizers.__version__}"

    # 1. Byte-level BPE, Split(regex) then ByteLevel without regex, NFC, added tokens.
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = train_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        vocab_size=700, special=special, normalizer=normalizers.NFC(), byte_level=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken("<custom>", normalized=False, special=False)])
    write("byte-level-split", tok,
          {"bos_token": None, "eos_token": "<|im_end|>", "add_bos_token": False,
           "chat_template": CHATML},
          "Split(llama-3 regex, isolated) + ByteLevel(use_regex=false); NFC")

    # 2. GPT-2 style ByteLevel with regex and prefix space, lowercase, digits, BOS post-processor.
    tok = train_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
        pre_tokenizers.Digits(individual_digits=True)]),
        vocab_size=600, special=["<bos>", "<eos>"],
        normalizer=normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]),
        byte_level=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    tok.add_tokens([AddedToken("<custom>", lstrip=True, rstrip=True, normalized=False)])
    write("byte-level-gpt2", tok, {"bos_token": "<bos>", "eos_token": "<eos>"},
          "ByteLevel(add_prefix_space, use_regex) + Digits; NFKC + Lowercase; BOS from post-processor")

    # 3. Metaspace BPE with byte fallback.
    base = train_bpe(pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                              split=True),
                     vocab_size=450, special=["<unk>", "<s>", "</s>"])
    data = add_byte_fallback(base, "<unk>")
    data["decoder"] = json.loads(decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)]).__getstate__())
    tok = Tokenizer.from_str(json.dumps(data))
    # transformers adds BOS from tokenizer_config.json's add_bos_token; the
    # tokenizers library only from a post-processor, so both say the same.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    write("metaspace", tok,
          {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
           "chat_template": "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"},
          "BPE(byte_fallback) + Metaspace(prepend_scheme=first, split=true)")

    # 4. Llama-2 layout: Prepend + Replace normalizers, no pre-tokenizer.
    data = add_byte_fallback(base, "<unk>")
    data["normalizer"] = json.loads(normalizers.Sequence([
        normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]).__getstate__())
    data["pre_tokenizer"] = None
    data["decoder"] = json.loads(decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0)]).__getstate__())
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    write("llama-style", tok, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True},
          "Prepend+Replace normalizers, no pre-tokenizer, byte fallback (Llama-2 tokenizer.json)")


if __name__ == "__main__":
    main()
