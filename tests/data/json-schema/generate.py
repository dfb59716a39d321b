#!/usr/bin/env python3
"""Reference verdicts from the jsonschema package for Herd's guided JSON.

For each schema below, generates documents from the schema with random
violations (a missing required property, a wrong type, an extra key, a string
or array of the wrong length, a value outside an enum) and records whether
jsonschema (Draft 2020-12) finds each one valid. Herd's test
(tests/coordinator/api/json_schema_test.cc) reads only cases.json: its
recognizer must take exactly the valid documents, so CI needs no Python.

Documents stay inside what Herd generates on purpose, so that the verdicts
compare: objects write declared properties in the schema's order, extra keys
only where additionalProperties allows some, enum values compact, and
whitespace as json.dumps writes it (compact or indent=2).

Pinned peer (install into a throwaway venv, not needed by CI):
    python3 -m venv /tmp/jsvenv
    /tmp/jsvenv/bin/pip install jsonschema==4.23.0
    /tmp/jsvenv/bin/python tests/data/json-schema/generate.py
"""
import importlib.metadata
import json
import os
import random

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
]

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
    if kind == "string":
        low = schema.get("minLength", 0)
        high = min(schema.get("maxLength", low + 6), low + 6)
        n = rng.randrange(low, high + 1)
        if rng.random() < p / 2:
            n = rng.choice([max(low - 1, 0), high + 1])
        return "".join(rng.choice(PIECES) for _ in range(n))
    if kind == "integer":
        return rng.randrange(-500, 500) if rng.random() > p / 2 else 1.5
    if kind == "number":
        return rng.choice([rng.randrange(-9, 99), rng.uniform(-1e4, 1e4), 1e-7, -0.0])
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def main():
    rng = random.Random(20261124)
    cases = []
    for name, schema, indent in SCHEMAS:
        validator = jsonschema.Draft202012Validator(schema)
        documents = []
        seen = set()
        while len(documents) < DOCUMENTS_PER_SCHEMA:
            value = gen(schema, schema, rng, 0, rng.choice([0.0, 0.1, 0.3]))
            pretty = indent and rng.random() < 0.5
            text = (json.dumps(value, ensure_ascii=False, indent=2) if pretty
                    else json.dumps(value, ensure_ascii=False, separators=(",", ":")))
            if text in seen:
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
