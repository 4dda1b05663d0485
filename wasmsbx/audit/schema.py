"""The JSON Schema of ``wasmsbx audit --json`` (report schema ``wasmsbx.audit/1``).

Every object is closed (``additionalProperties: false``), so a field that is not described
here cannot appear in the output without a test failing; the README ("## audit") documents
the same fields, and a test checks that too. Adding a field is a compatible change within
``wasmsbx.audit/1``; renaming or removing one, or changing its meaning, bumps the version.
"""

from __future__ import annotations

SEVERITY = {"enum": ["info", "low", "medium", "high"]}
NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}
STRINGS = {"type": "array", "items": {"type": "string"}}


def _obj(required: dict, description: str = "") -> dict:
    """A closed object whose properties are all required."""
    out = {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(required),
        "properties": required,
    }
    if description:
        out["description"] = description
    return out


def _d(schema: dict, description: str) -> dict:
    return {**schema, "description": description}


GRANT = _obj({"host": {"type": "string"}, "guest": {"type": "string"}})

SCHEMA = _obj(
    {
        "schema": _d({"const": "wasmsbx.audit/1"}, "report format and version"),
        "tool": _obj({"name": {"const": "wasmsbx"}, "version": {"type": "string"}}),
        "module": _obj(
            {
                "path": _d({"type": "string"}, "the module path as given"),
                "size": _d({"type": "integer", "minimum": 0}, "file size in bytes (binary)"),
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "functions": _d({"type": "integer", "minimum": 0}, "defined functions"),
                "features": _d(STRINGS, "wasm proposals the code uses"),
                "producers": _d(
                    {"type": "object", "additionalProperties": STRINGS},
                    "the producers section: field -> ['name version', ...]",
                ),
                "name_section": {"type": "boolean"},
                "debug_info": _d({"type": "boolean"}, "DWARF .debug_* sections present"),
                "custom_sections": {
                    "type": "array",
                    "items": _obj({"name": {"type": "string"}, "size": {"type": "integer"}}),
                },
            }
        ),
        "policy": _obj(
            {
                "source": _d({"type": ["string", "null"]}, "policy file, null for defaults"),
                "limits": _obj(
                    {
                        "memory": _d({"type": "integer"}, "bytes"),
                        "table_elements": {"type": "integer"},
                        "instances": {"type": "integer"},
                        "fuel": NULLABLE_INT,
                        "timeout": _d({"type": "number"}, "seconds"),
                        "stack": NULLABLE_INT,
                        "output": NULLABLE_INT,
                    }
                ),
                "filesystem": _obj(
                    {
                        "read_only": {"type": "array", "items": GRANT},
                        "read_write": {"type": "array", "items": GRANT},
                    }
                ),
                "env": _obj({"inherit": STRINGS, "set": _d(STRINGS, "names only, no values")}),
                "stdio": _obj({s: {"type": "string"} for s in ("stdin", "stdout", "stderr")}),
                "memory_layout": _obj(
                    {
                        "layout": {"enum": ["fast", "dense"]},
                        "reservation": _d(
                            NULLABLE_INT,
                            "bytes each linear memory reserves on wasmtime; null: "
                            "wasmtime's own (4 GiB + guards)",
                        ),
                        "init": _d(
                            {"enum": ["cow", "copy"]},
                            "data segments mapped copy-on-write, or copied in",
                        ),
                    }
                ),
            }
        ),
        "capabilities": {
            "type": "array",
            "items": _obj(
                {
                    "name": {
                        "enum": [
                            "filesystem",
                            "stdio",
                            "environment",
                            "args",
                            "clock",
                            "random",
                            "polling",
                            "process",
                            "sockets",
                            "custom",
                        ]
                    },
                    "title": {"type": "string"},
                    "imports": STRINGS,
                    "status": {"enum": ["granted", "denied", "always", "never"]},
                    "detail": {"type": "string"},
                }
            ),
        },
        "imports": {
            "type": "array",
            "items": _obj(
                {
                    "module": {"type": "string"},
                    "name": {"type": "string"},
                    "kind": {"enum": ["func", "table", "memory", "global", "tag"]},
                    "signature": {"type": ["string", "null"]},
                    "capability": {"type": "string"},
                    "explanation": _d({"type": "string"}, "one phrase"),
                    "provided": _d({"type": "boolean"}, "the sandbox links it"),
                    "problem": _d({"type": ["string", "null"]}, "why it does not link"),
                }
            ),
        },
        "exports": {
            "type": "array",
            "items": _obj(
                {
                    "name": {"type": "string"},
                    "kind": {"enum": ["func", "table", "memory", "global", "tag"]},
                    "index": {"type": "integer"},
                    "signature": {"type": ["string", "null"]},
                }
            ),
        },
        "memories": {
            "type": "array",
            "items": _obj(
                {
                    "index": {"type": "integer"},
                    "imported": {"type": "boolean"},
                    "min_pages": {"type": "integer"},
                    "max_pages": NULLABLE_INT,
                    "min_bytes": {"type": "integer"},
                    "max_bytes": NULLABLE_INT,
                    "shared": {"type": "boolean"},
                    "memory64": {"type": "boolean"},
                }
            ),
        },
        "tables": {
            "type": "array",
            "items": _obj(
                {
                    "index": {"type": "integer"},
                    "imported": {"type": "boolean"},
                    "elem": {"type": "string"},
                    "min": {"type": "integer"},
                    "max": NULLABLE_INT,
                }
            ),
        },
        "globals": {
            "type": "array",
            "items": _obj(
                {
                    "index": {"type": "integer"},
                    "type": {"type": "string"},
                    "mutable": {"type": "boolean"},
                    "imported": {"type": "boolean"},
                    "exported_as": STRINGS,
                }
            ),
        },
        "start": {
            "oneOf": [
                {"type": "null"},
                _obj({"function": {"type": "integer"}, "export": {"type": ["string", "null"]}}),
            ]
        },
        "data": _obj(
            {
                "segments": {"type": "integer"},
                "total_bytes": {"type": "integer"},
                "largest_bytes": {"type": "integer"},
                "sizes": {"type": "array", "items": {"type": "integer"}},
            }
        ),
        "findings": {
            "type": "array",
            "items": _obj(
                {
                    "rule": {"type": "string", "pattern": "^WSX[0-9]{3}$"},
                    "name": _d({"type": "string"}, "the rule's slug"),
                    "severity": SEVERITY,
                    "title": {"type": "string"},
                    "message": _d({"type": "string"}, "one line: what was found"),
                    "fix": _d({"type": "string"}, "one line: what to do"),
                    "points": _d({"type": "integer", "minimum": 0}, "risk score addend"),
                    "subject": _d({"type": "string"}, "what it is about"),
                    "where": {"enum": ["module", "policy"]},
                    "key": _d({"type": ["string", "null"]}, "dotted policy key"),
                }
            ),
        },
        "summary": _obj(
            {
                "findings": {"type": "integer"},
                "by_severity": _obj({s: {"type": "integer"} for s in SEVERITY["enum"]}),
                "worst": {"oneOf": [{"type": "null"}, SEVERITY]},
            }
        ),
        "risk": _obj(
            {
                "score": {"type": "integer", "minimum": 0, "maximum": 100},
                "level": {"enum": ["minimal", "low", "moderate", "high"]},
                "total": _d({"type": "integer"}, "the uncapped sum"),
                "items": {
                    "type": "array",
                    "items": _obj(
                        {
                            "rule": {"type": "string"},
                            "subject": {"type": "string"},
                            "points": {"type": "integer"},
                        }
                    ),
                },
                "formula": {"type": "string"},
            }
        ),
        "truncated": _d(
            {
                "oneOf": [
                    {"type": "null"},
                    _obj(
                        {
                            "lists": _d(
                                {"type": "object", "additionalProperties": {"type": "integer"}},
                                "each list cut ('exports', 'capabilities[0].imports') -> "
                                "its full length",
                            ),
                            "kept": _d({"type": "integer"}, "items each cut list keeps"),
                            "reason": {"type": "string"},
                        }
                    ),
                ]
            },
            "null, or which lists were cut to their first items",
        ),
    },
    "wasmsbx audit --json",
)
SCHEMA["$schema"] = "https://json-schema.org/draft/2020-12/schema"
SCHEMA["$id"] = "https://wasmsbx.invalid/schemas/audit-1.json"
