#!/usr/bin/env python3
"""Reference verdicts from CPython's re module for Herd's regex DFA.

For each pattern below, records whether re.fullmatch (mode "full": vLLM's
guided_regex) or re.search (mode "search": JSON Schema's pattern) matches
each of a set of strings: known matches, their one-character mutations and
random strings over the pattern's alphabet. Herd's test
(tests/coordinator/api/regex_test.cc) reads only cases.json.

The patterns stay where ECMAScript (JSON Schema's dialect, Herd's) and
Python agree (a named group is translated to Python's (?P<name>)): re.ASCII (\\d \\w \\s are ASCII in both; ECMAScript's \\s also
has Unicode spaces, which no string here holds), no '\\r' in strings ('.'
excludes it in ECMAScript only), and a final '$' read as \\Z (Python's '$'
also matches before a final newline).

    python3 tests/data/regex/generate.py   (the standard library only)
"""
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PATTERNS = [
    ("full", r"[a-z]+"),
    ("full", r"a*b?c{2,3}"),
    ("full", r"(ab|cd)*e"),
    ("full", r"\d{3}-\d{4}"),
    ("full", r"[A-Z][a-z]{0,5}( [A-Z][a-z]{0,5})?"),
    ("full", r"(?:yes|no|maybe)"),
    ("full", r"\w+@\w+\.(com|org)"),
    ("full", r"[^aeiou\s]{1,4}"),
    ("full", r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?"),
    ("full", r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"),
    ("full", r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}"),
    ("full", r"(a|b)*abb"),
    ("full", r"x{3}|y{2,}"),
    ("full", r"\.\*\+\?\(\)\[\]\{\}\|\\"),
    ("full", r"[\d.]+"),
    ("full", r"[a\-z]+"),
    ("full", r"é+日?"),
    ("full", r"(?<word>\w+) \w+"),
    ("full", r".{2}"),
    ("full", r"\S+\s\S+"),
    ("full", r"[\x41-\x43]\u0044"),
    ("full", r"a{0}b"),
    ("full", r"(a?){3}"),
    ("search", r"ab"),
    ("search", r"^ab"),
    ("search", r"ab$"),
    ("search", r"^a.c$"),
    ("search", r"\d+"),
    ("search", r"^[A-Z]{2}\d{2}$"),
    ("search", r"(x|y)z"),
    ("search", r"^$"),
    ("search", r"^(\+\d{1,3} )?\d{3}$"),
]

# Matches rejection sampling rarely finds.
EXAMPLES = {
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}": ["0123abcd-EF89", "ffffffff-0000", "a1B2c3D4-e5F6"],
    r"\.\*\+\?\(\)\[\]\{\}\|\\": [".*+?()[]{}|\\"],
    r"\d{3}-\d{4}": ["555-0199", "000-0000", "123-4567"],
    r"(?:yes|no|maybe)": ["yes", "no", "maybe"],
    r"\w+@\w+\.(com|org)": ["a@b.com", "x_1@y2.org", "me@example.com"],
    r"[\x41-\x43]\u0044": ["AD", "BD", "CD"],
    r"^[A-Z]{2}\d{2}$": ["AB12", "ZZ00"],
}

ALPHABET = "abcdexyzABCDEZ0123456789-_.@ +eE()[]{}|\\*?é日\n\t"


def matches(mode, pattern, text):
    pattern = pattern.replace("(?<", "(?P<")  # Python spells a named group so
    if mode == "full":
        return re.fullmatch(pattern, text, re.ASCII) is not None
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.search(pattern, text, re.ASCII) is not None


def main():
    rng = random.Random(20261124)
    cases = []
    for mode, pattern in PATTERNS:
        texts = set()
        # Matches found by rejection from random strings over a small alphabet,
        # weighted to the pattern's own characters.
        own = [c for c in pattern if c not in "^$()|?*+{}[]\\"] or ["a"]
        attempts = 0
        found = list(EXAMPLES.get(pattern, []))
        texts.update(found)
        while len(found) < 12 and attempts < 200000:
            attempts += 1
            n = rng.randrange(0, 12)
            pool = own + list(ALPHABET) if rng.random() < 0.3 else own
            text = "".join(rng.choice(pool) for _ in range(n))
            if matches(mode, pattern, text) and text not in texts:
                found.append(text)
                texts.add(text)
        for text in list(found):
            for _ in range(6):
                chars = list(text)
                op = rng.randrange(3)
                at = rng.randrange(len(chars) + 1)
                if op == 0:
                    chars.insert(at, rng.choice(ALPHABET))
                elif op == 1 and chars:
                    del chars[min(at, len(chars) - 1)]
                elif chars:
                    chars[min(at, len(chars) - 1)] = rng.choice(ALPHABET)
                texts.add("".join(chars))
        for _ in range(30):
            texts.add("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(8))))
        strings = [{"text": t, "match": matches(mode, pattern, t)} for t in sorted(texts)]
        cases.append({"mode": mode, "pattern": pattern, "strings": strings})
    out = {"peer": f"CPython {sys.version.split()[0]} re (re.ASCII)", "cases": cases}
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for case in cases:
        n = sum(s["match"] for s in case["strings"])
        print(f"{case['mode']:6s} {case['pattern']:40s} {n:3d} match, "
              f"{len(case['strings']) - n:3d} not")


if __name__ == "__main__":
    main()
