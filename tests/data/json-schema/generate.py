#!/usr/bin/env python3
"""Reference verdicts from the jsonschema package for Herd's guided JSON.

For each schema below, generates documents from the schema with random
violations (a missing required property, a wrong type, an extra key, a string
or array of the wrong length, a value outside an enum) and records whether
jsonschema (Draft 2020-12) finds each one valid. Herd's test
(tests/coordinator/api/json_schema_test.cc) reads only cases.json: its
recognizer must take exactly the valid documents, so CI needs no Python.

Documents stay inside what Herd generates on purpose, so that the verdicts
compare (formats checked by jsonschema's format checker, with rfc3339-validator for
time and date-time): objects write declared properties in the schema's order, extra keys
only where additionalProperties allows some, enum values compact, and
whitespace as json.dumps writes it (compact or indent=2).

Pinned peer (install into a throwaway venv, not needed by CI):
    python3 -m venv /tmp/jsvenv
    /tmp/jsvenv/bin/pip install jsonschema==4.23.0 rfc3339-validator==0.1.4
    /tmp/jsvenv/bin/python tests/data/json-schema/generate.py
"""
import datetime
import importlib.metadata
import json
import os
import random
import re

import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))
DOCUMENTS_PER_SCHEMA = 80

ADDRESS = {"type": "object",
           "properties": {"street": {"type": "string", "maxLength": 6},
                          "zip": {"type": "string", "minLength": 5, "maxLength": 5}},
           "required": ["street", "zip"], "additionalProperties": False}

# (name, schema, whether documents may be indented)
SCHEMAS = [
    ("person", {"type": "object",
                "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 8},
                               "age": {"type": "integer"},
                               "email": {"type": "string"},
                               "active": {"type": "boolean"}},
                "required": ["name", "age", "active"], "additionalProperties": False}, True),
    ("tags", {"type": "object",
              "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                      "minItems": 1, "maxItems": 3},
                             "score": {"type": "number"}},
              "required": ["tags"]}, True),
    ("optional", {"type": "object",
                  "properties": {"title": {"type": "string"},
                                 "rating": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                                 "note": {"anyOf": [{"type": "string", "maxLength": 5},
                                                    {"type": "null"}]}},
                  "required": ["title", "rating", "note"], "additionalProperties": False},
     True),
    ("refs", {"$defs": {"Address": ADDRESS},
              "type": "object",
              "properties": {"home": {"$ref": "#/$defs/Address"},
                             "work": {"anyOf": [{"$ref": "#/$defs/Address"},
                                                {"type": "null"}]}},
              "required": ["home"], "additionalProperties": False}, True),
    ("tree", {"type": "object",
              "properties": {"value": {"type": "integer"},
                             "children": {"type": "array", "items": {"$ref": "#"},
                                          "maxItems": 2}},
              "required": ["value"], "additionalProperties": False}, False),
    ("extra", {"type": "object", "properties": {"id": {"type": "string", "maxLength": 4}},
               "required": ["id"], "additionalProperties": {"type": "integer"}}, True),
    ("literals", {"type": "object",
                  "properties": {"kind": {"const": "point"},
                                 "coords": {"type": "array", "items": {"type": "number"},
                                            "minItems": 2, "maxItems": 2},
                                 "flag": {"enum": [True, None, 1, "x", {"a": [1, "b"]}]}},
                  "required": ["kind", "coords", "flag"], "additionalProperties": False},
     False),
    ("numbers", {"type": "array",
                 "items": {"type": "object",
                           "properties": {"k": {"enum": [1, 12, 123, -4]},
                                          "v": {"type": ["string", "integer", "null"]}},
                           "required": ["k", "v"], "additionalProperties": False},
                 "maxItems": 4}, True),
    ("unicode", {"type": "object",
                 "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 3},
                                "a\"b": {"type": "boolean"},
                                "ü": {"type": "null"}},
                 "required": ["s", "a\"b"], "additionalProperties": False}, True),
    ("any_object", {"type": "object"}, True),
    ("formats", {"type": "object",
                 "properties": {"day": {"type": "string", "format": "date"},
                                "at": {"type": "string", "format": "date-time"},
                                "clock": {"type": "string", "format": "time"},
                                "id": {"type": "string", "format": "uuid"},
                                "ip": {"type": "string", "format": "ipv4"},
                                "mail": {"type": "string", "format": "email"}},
                 "required": ["day", "at", "clock", "id", "ip", "mail"],
                 "additionalProperties": False}, True),
    ("bounds", {"type": "object",
                "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 120},
                               "m": {"type": "integer", "exclusiveMinimum": 0,
                                     "exclusiveMaximum": 1000},
                               "k": {"type": ["integer", "null"], "minimum": 7}},
                "required": ["n", "m", "k"], "additionalProperties": False}, True),
    ("patterns", {"type": "object",
                  "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$"},
                                 "word": {"type": "string", "pattern": "ab", "maxLength": 5},
                                 "tail": {"type": "string", "pattern": "(x|yz)$"},
                                 "uni": {"type": "string", "pattern": "^[é日]+\\.$"}},
                  "required": ["code", "word"], "additionalProperties": False}, True),
]


# Strings for `format` and `pattern`: a value of the right shape, or one with
# a letter inserted, replaced or deleted (no digits: a time's seconds never
# become 60, which jsonschema's checker and Herd both refuse anyway).
def format_value(fmt, rng):
    d = f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    t = (f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
         + rng.choice(["", ".5", ".123456"]) + rng.choice(["Z", "z", "+05:30", "-11:00"]))
    hexes = "0123456789abcdefABCDEF"
    return {
        "date": d,
        "time": t,
        "date-time": d + rng.choice("Tt") + t,
        "uuid": "-".join("".join(rng.choice(hexes) for _ in range(n)) for n in (8, 4, 4, 4, 12)),
        "ipv4": ".".join(str(rng.choice([0, 7, 42, 199, 255, rng.randrange(256)]))
                         for _ in range(4)),
        "email": rng.choice(["a", "john.doe", "x_y+z"]) + "@" + rng.choice(["ex.com", "a-b.org.uk"]),
    }[fmt]


def pattern_value(pattern, rng):
    return {
        "^[A-Z]{3}-\\d{2}$": "".join(rng.choice("ABZ") for _ in range(3)) + "-"
                              + "".join(rng.choice("0123456789") for _ in range(2)),
        "ab": "".join(rng.choice("xab") for _ in range(rng.randrange(2))) + "ab"
              + "".join(rng.choice("xab") for _ in range(rng.randrange(2))),
        "(x|yz)$": "".join(rng.choice("abxyz") for _ in range(rng.randrange(4)))
                   + rng.choice(["x", "yz"]),
        "^[é日]+\\.$": "".join(rng.choice("é日") for _ in range(1 + rng.randrange(3))) + ".",
    }[pattern]


def mutate_string(text, rng):
    chars = list(text)
    op = rng.randrange(3)
    at = rng.randrange(len(chars) + 1)
    if op == 0:
        chars.insert(at, rng.choice("xq-:@."))
    elif chars and op == 1:
        del chars[min(at, len(chars) - 1)]
    elif chars:
        chars[min(at, len(chars) - 1)] = rng.choice("xq-:@.")
    return "".join(chars)


def outside_herds_shapes(schema, value):
    """Documents where the peer and Herd's shapes knowingly differ: a date
    of the right shape but not on the calendar (Herd checks the shape), an
    email jsonschema takes for its '@' alone (Herd writes a dotted domain)."""
    if not isinstance(value, dict):
        return False
    for name, sub in schema.get("properties", {}).items():
        text = value.get(name)
        if not isinstance(text, str):
            continue
        fmt = sub.get("format")
        if fmt in ("date", "date-time") and re.fullmatch(r"\d{4}-\d\d-\d\d([Tt].*)?", text):
            try:
                datetime.date.fromisoformat(text[:10])
            except ValueError:
                return True
        if fmt == "email" and "@" in text and not re.fullmatch(
                r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63}){1,4}", text):
            return True
    return False

PIECES = ["a", "Z", " ", "\"", "\\", "/", "\n", "\x01", "é", "日", "😀", "}", ","]


def resolve(schema, root):
    while "$ref" in schema:
        node = root
        for part in schema["$ref"][2:].split("/") if schema["$ref"] != "#" else []:
            node = node[part]
        schema = node
    return schema


def wrong_value(rng):
    return rng.choice([None, True, 7, 2.5, "s", [], {}, {"q": 1}])


def any_value(rng, depth):
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-1000, 1000)
    if kind == 3:
        return rng.uniform(-1e3, 1e3)
    if kind in (4, 5):
        return "".join(rng.choice(PIECES) for _ in range(rng.randrange(5)))
    if kind == 6:
        return [any_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice("abcxyz") * rng.randrange(1, 3): any_value(rng, depth + 1)
            for _ in range(rng.randrange(3))}


def gen(schema, root, rng, depth, p):
    """A value for `schema`, violating it somewhere with probability about p
    per node."""
    schema = resolve(schema, root)
    if schema is True or schema == {}:
        return any_value(rng, depth)
    if rng.random() < p / 3:
        return wrong_value(rng)
    if "anyOf" in schema:
        return gen(rng.choice(schema["anyOf"]), root, rng, depth, p)
    if "const" in schema:
        return schema["const"] if rng.random() > p else wrong_value(rng)
    if "enum" in schema:
        return rng.choice(schema["enum"]) if rng.random() > p else rng.choice([0, 2, "d", False])
    types = schema.get("type", "object")
    kind = rng.choice(types) if isinstance(types, list) else types
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        out = {}
        for name, sub in props.items():
            if name in required and rng.random() < p / 2:
                continue
            if name in required or rng.random() < 0.5:
                out[name] = gen(sub, root, rng, depth + 1, p)
        extra = schema.get("additionalProperties")
        if extra not in (None, False) or not props:
            for _ in range(rng.randrange(3)):
                key = rng.choice(["x", "y", "id2", "é"])
                if key not in props:
                    out[key] = (gen(extra, root, rng, depth + 1, p) if isinstance(extra, dict)
                                else any_value(rng, depth + 1))
        elif extra is False and rng.random() < p / 2:
            out["zz"] = 1
        return out
    if kind == "array":
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 3), low + 3)
        if depth >= 3:
            high = low
        n = rng.randrange(low, high + 1)
        if rng.random() < p / 2:
            n = rng.choice([max(low - 1, 0), high + 1])
        return [gen(schema.get("items", True), root, rng, depth + 1, p) for _ in range(n)]
    if kind == "string" and ("format" in schema or "pattern" in schema):
        text = (format_value(schema["format"], rng) if "format" in schema
                else pattern_value(schema["pattern"], rng))
        if schema.get("maxLength", 99) < len(text):
            text = text[:schema["maxLength"]]
        return mutate_string(text, rng) if rng.random() < p * 2 else text
    if kind == "string":
        low = schema.get("minLength", 0)
        high = min(schema.get("maxLength", low + 6), low + 6)
        n = rng.randrange(low, high + 1)
        if rng.random() < p / 2:
            n = rng.choice([max(low - 1, 0), high + 1])
        return "".join(rng.choice(PIECES) for _ in range(n))
    if kind == "integer":
        if rng.random() < p / 2:
            return 1.5
        bounds = [schema[k] + d for k in ("minimum", "maximum", "exclusiveMinimum",
                                          "exclusiveMaximum") if k in schema for d in (-1, 0, 1)]
        if bounds and rng.random() < 0.4:
            return rng.choice(bounds)
        low = schema.get("minimum", schema.get("exclusiveMinimum", -501) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", 1501) - 1)
        if bounds and rng.random() < 0.6:
            return rng.randrange(low, high + 1)
        return rng.randrange(-500, 1500)
    if kind == "number":
        return rng.choice([rng.randrange(-9, 99), rng.uniform(-1e4, 1e4), 1e-7, -0.0])
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def main():
    rng = random.Random(20261124)
    cases = []
    for name, schema, indent in SCHEMAS:
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        documents = []
        seen = set()
        while len(documents) < DOCUMENTS_PER_SCHEMA:
            value = gen(schema, schema, rng, 0, rng.choice([0.0, 0.1, 0.3]))
            pretty = indent and rng.random() < 0.5
            text = (json.dumps(value, ensure_ascii=False, indent=2) if pretty
                    else json.dumps(value, ensure_ascii=False, separators=(",", ":")))
            if text in seen or outside_herds_shapes(schema, value):
                continue
            seen.add(text)
            documents.append({"text": text, "valid": validator.is_valid(value)})
        cases.append({"name": name, "schema": schema, "documents": documents})
    out = {"peer": f"jsonschema {importlib.metadata.version('jsonschema')} Draft202012Validator",
           "cases": cases}
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for case in cases:
        valid = sum(d["valid"] for d in case["documents"])
        print(f"{case['name']:12s} {valid:3d} valid, {len(case['documents']) - valid:3d} invalid")


if __name__ == "__main__":
    main()
