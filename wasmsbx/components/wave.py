"""WAVE, the WebAssembly Value Encoding: the value syntax of the wasmtime CLI.

``parse(text, type)`` reads one value of a WIT type into its canonical Python form
(``values``); ``format(value, type)`` writes one back. The syntax (wasm-wave):

    true  false  42  -7  1.5  -2e10  nan  inf  -inf  'c'  "text\\n"
    [1, 2, 3]  (1, "a")  {name: "x", n: 2}  red  circle(1.5)  {read, write}  {}
    some(5)  none  ok(1)  err("no")  ok  err

Escapes in chars and strings: ``\\' \\" \\\\ \\t \\n \\r \\u{1F600}``. Labels are
kebab-case; a label that is a keyword is written with a leading ``%`` (``%none``).
Trailing commas are allowed, and record fields of option type may be left out
(``none``). When parsing, ``some(...)`` and ``ok(...)`` may also be left out where the
payload cannot be mistaken for a tag, as the wasmtime CLI allows.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from ..values import BEYOND, cut, long_decimal
from .types import INTS, WitType, case_types
from .values import (
    Err,
    Ok,
    Some,
    ValueProblem,
    Variant,
    check,
    decimal_digits,
    paced,
    text_width,
    weight,
)

KEYWORDS = frozenset({"true", "false", "some", "none", "ok", "err", "inf", "nan"})
_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_WRITE_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _int(word: str) -> int:
    """The digits of ``word``, even past the 4,300 int() converts (they were "not a valid
    s32"): ``BEYOND`` (signed) stands for what is beyond every type then."""
    try:
        return int(word)
    except ValueError:
        value = long_decimal(word)
        if value is None:
            raise
        return value


class WaveError(ValueProblem):
    """Text that is not a WAVE value of the expected type; ``offset`` into the text."""

    def __init__(self, message: str, offset: int, text: str) -> None:
        if len(text) > 80:  # (an argument of 5,000 digits filled the message)
            text = f"{len(text):,} characters, near {text[max(0, offset - 20) : offset + 20]!r}"
        else:
            text = repr(text)
        super().__init__(f"{message} at offset {offset} of {text}")
        self.offset = offset


def parse(text: str, t: WitType) -> Any:
    """One WAVE value of type ``t`` (all of ``text``), in canonical Python form."""
    p = _Parser(text)
    value = p.value(t)
    p.space()
    if p.pos != len(text):
        raise p.error("unexpected text after the value")
    return value


def parse_call(text: str) -> tuple:
    """``name(arg, ...)`` (the wasmtime CLI's ``--invoke``): (name, [argument texts]).

    The arguments are split at top-level commas and parsed later, once the function
    (and so their types) is known."""
    text = text.strip()
    open_at = text.find("(")
    if open_at <= 0 or not text.endswith(")"):
        raise WaveError('expected NAME(ARGS...), e.g. greet("World")', 0, text)
    name, inner = text[:open_at].strip(), text[open_at + 1 : -1]
    return name, _split_top(inner, text, open_at + 1)


def _split_top(inner: str, text: str, base: int) -> list:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(inner):
        c = inner[i]
        if c in "\"'":
            i = _Parser(inner, i).quoted_end(c)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                raise WaveError("unbalanced brackets", base + i, text)
        elif c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
        i += 1
    if depth:
        raise WaveError("unbalanced brackets", base + len(inner), text)
    last = inner[start:]
    if last.strip() or parts:
        parts.append(last)
    if parts and not parts[-1].strip():  # a trailing comma
        parts.pop()
    return [p.strip() for p in parts]


class _Parser:
    def __init__(self, text: str, pos: int = 0) -> None:
        self.text = text
        self.pos = pos

    def error(self, message: str) -> WaveError:
        return WaveError(message, self.pos, self.text)

    def space(self) -> None:
        text = self.text
        while self.pos < len(text):
            if text[self.pos].isspace():
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def peek(self) -> str:
        self.space()
        return self.text[self.pos : self.pos + 1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = self.text[self.pos : self.pos + 1] or "the end"
            raise self.error(f"expected {char!r}, found {found!r}")
        self.pos += 1

    def eat(self, char: str) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    # ------------------------------------------------------------ values
    def value(self, t: WitType) -> Any:
        self.space()
        start = self.pos
        raw = self._value(t)
        try:
            return check(raw, t)
        except ValueProblem as exc:
            if start == 0 and self.pos >= len(self.text.rstrip()):
                raise ValueProblem(exc.message) from None  # the whole text: no position
            self.pos = start
            raise self.error(exc.message) from None

    def _value(self, t: WitType) -> Any:
        k = t.kind
        if k in INTS or k in ("f32", "f64"):
            return self.number(k)
        if k == "bool":
            word = self.label(allow_keywords=True)
            if word not in ("true", "false"):
                raise self.error(f"expected true or false, found {word!r}")
            return word == "true"
        if k == "char":
            text = self.quoted("'")
            return text
        if k == "string":
            return self.quoted('"')
        reader = getattr(self, "read_" + k, None)
        if reader is None:
            from .types import passable

            raise self.error(passable(t) or f"cannot write a {t} value")
        return reader(t)

    def number(self, kind: str) -> Any:
        self.space()
        text = self.text
        end = self.pos
        while end < len(text) and (text[end].isalnum() or text[end] in "+-._"):
            end += 1
        word = text[self.pos : end]
        if not word:
            raise self.error(f"expected a number ({kind})")
        try:
            if kind in INTS:
                if not word.lstrip("-").isdigit():
                    raise ValueError
                value: Any = _int(word)
            else:
                if word.lstrip("-") not in ("inf", "nan") and not _is_decimal(word):
                    raise ValueError
                value = float(word)
        except ValueError:
            raise self.error(f"{cut(word)} is not a valid {kind}") from None
        if kind in INTS and abs(value) == BEYOND:
            raise self.error(f"{cut(word)} is out of range for {kind}")
        self.pos = end
        return value

    def quoted_end(self, quote: str) -> int:
        """The offset just past the quoted literal that starts at ``pos``."""
        self.quoted(quote)
        return self.pos

    def quoted(self, quote: str) -> str:
        self.space()
        if self.text[self.pos : self.pos + 1] != quote:
            what = "a string in double quotes" if quote == '"' else "a char in single quotes"
            raise self.error(f"expected {what}")
        self.pos += 1
        out = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise self.error("unterminated literal")
            c = text[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\":
                out.append(self.escape())
            elif c == "\n":
                raise self.error("line break inside a literal (write \\n)")
            else:
                out.append(c)

    def escape(self) -> str:
        c = self.text[self.pos : self.pos + 1]
        self.pos += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        if c == "u" and self.text[self.pos : self.pos + 1] == "{":
            end = self.text.find("}", self.pos)
            digits = self.text[self.pos + 1 : end] if end > 0 else ""
            try:
                code = int(digits, 16)
                if not digits or len(digits) > 6 or 0xD800 <= code <= 0xDFFF:
                    raise ValueError
                char = chr(code)
            except ValueError:
                raise self.error(f"invalid escape \\u{{{digits}}}") from None
            self.pos = end + 1
            return char
        raise self.error(f"invalid escape \\{c}")

    def label(self, allow_keywords: bool = False) -> str:
        self.space()
        text = self.text
        escaped = text[self.pos : self.pos + 1] == "%"
        start = self.pos + escaped
        end = start
        while end < len(text) and (text[end].isalnum() or text[end] == "-"):
            end += 1
        word = text[start:end]
        if not word:
            raise self.error("expected a name")
        if word in KEYWORDS and not escaped and not allow_keywords:
            raise self.error(f"{word!r} is a keyword; write %{word} for the name")
        self.pos = end
        return word

    def items(self, close: str, read) -> list:
        out = []
        while not self.eat(close):
            out.append(read())
            if not self.eat(","):
                self.expect(close)
                break
        return out

    def read_list(self, t: WitType) -> list:
        self.expect("[")
        return self.items("]", lambda: self.value(t.items[0]))

    def read_tuple(self, t: WitType) -> tuple:
        self.expect("(")
        types = iter(t.items)

        def one() -> Any:
            element = next(types, None)
            if element is None:
                raise self.error(f"too many elements for {t}")
            return self.value(element)

        return tuple(self.items(")", one))

    def read_record(self, t: WitType) -> dict:
        self.expect("{")
        types = dict(t.items)
        out: dict = {}

        def one() -> None:
            name = self.label(allow_keywords=True)
            if name not in types:
                raise self.error(f"unknown field {name!r}; fields: {', '.join(types)}")
            if name in out:
                raise self.error(f"field {name!r} given twice")
            self.expect(":")
            out[name] = self.value(types[name])

        self.items("}", one)
        return out

    def read_enum(self, t: WitType) -> str:
        return self.label()

    def read_flags(self, t: WitType) -> set:
        self.expect("{")
        return set(self.items("}", self.label))

    def read_variant(self, t: WitType) -> Variant:
        name = self.label()
        cases = case_types(t)
        if name not in cases:
            raise self.error(f"unknown case {name!r}; cases: {', '.join(cases)}")
        return Variant(name, self.payload(cases[name], name))

    def payload(self, ptype: Any, case: str) -> Any:
        if ptype is None:
            if self.peek() == "(":
                raise self.error(f"case {case!r} has no payload")
            return None
        self.expect("(")
        value = self.value(ptype)
        self.expect(")")
        return value

    def _tag(self, tags: tuple) -> Any:
        """The keyword at ``pos`` if it is one of ``tags`` (not consumed otherwise)."""
        self.space()
        save = self.pos
        text = self.text
        end = save
        while end < len(text) and (text[end].isalnum() or text[end] == "-"):
            end += 1
        word = text[save:end]
        if word in tags:
            self.pos = end
            return word
        return None

    def read_option(self, t: WitType) -> Any:
        tag = self._tag(("some", "none"))
        if tag == "none":
            return None
        if tag == "some":
            value = self.payload(t.items[0], "some")
            return Some(value) if t.items[0].kind == "option" else value
        if t.items[0].kind == "option":
            raise self.error("write some(...) or none for a nested option")
        return self.value(t.items[0])

    def read_result(self, t: WitType) -> Any:
        tag = self._tag(("ok", "err"))
        ok, err = t.items
        if tag == "ok":
            return Ok(self.payload(ok, "ok"))
        if tag == "err":
            return Err(self.payload(err, "err"))
        if ok is None:
            raise self.error(f"expected ok or err for {t}")
        return Ok(self.value(ok))


def _is_decimal(word: str) -> bool:
    body = word[1:] if word[:1] == "-" else word
    mantissa, _, exponent = body.lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()) or mantissa.endswith("."):
        return False
    if exponent:
        exponent = exponent[1:] if exponent[:1] in "+-" else exponent
        return exponent.isdigit()
    return "e" not in body.lower()


# ---------------------------------------------------------------- printing


def format(value: Any, t: WitType) -> str:  # noqa: A001 - the module's verb, as json.dumps
    """``value`` (canonical Python form of ``t``) as WAVE text."""
    k = t.kind
    if k in INTS:
        return str(value)
    if k in ("f32", "f64"):
        return format_float(value, k)
    if k == "bool":
        return "true" if value else "false"
    if k == "char":
        return "'" + _escape(value, "'") + "'"
    if k == "string":
        return '"' + _escape(value, '"') + '"'
    if k == "list":
        return "[" + ", ".join(format(v, t.items[0]) for v in value) + "]"
    if k == "tuple":
        return "(" + ", ".join(format(v, e) for v, e in zip(value, t.items)) + ")"
    if k == "record":
        return "{" + ", ".join(f"{_label(n)}: {format(value[n], f)}" for n, f in t.items) + "}"
    if k == "enum":
        return _label(value)
    if k == "flags":
        return "{" + ", ".join(_label(n) for n in t.items if n in value) + "}"
    if k == "option":
        if value is None:
            return "none"
        inner = value.value if isinstance(value, Some) else value
        return f"some({format(inner, t.items[0])})"
    if k == "result":
        case, ptype = ("ok", t.items[0]) if isinstance(value, Ok) else ("err", t.items[1])
        return case if ptype is None else f"{case}({format(value.value, ptype)})"
    if k == "variant":
        ptype = case_types(t)[value.case]
        label = _label(value.case)
        return label if ptype is None else f"{label}({format(value.payload, ptype)})"
    raise ValueProblem(f"cannot print a {t} value")


def format_float(value: float, kind: str) -> str:
    """The shortest digits that read back to the same f32/f64, written positionally as
    wasm-wave (and so the wasmtime CLI) writes them: 4, 0.1, 100000000000000000000."""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    digits = repr(value)
    if kind == "f32":
        try:
            target = struct.pack("<f", value)
        except OverflowError:
            raise ValueProblem(f"{value!r} is out of range for f32") from None
        for precision in range(1, 10):
            digits = f"{value:.{precision}g}"
            try:
                # digits rounded up past the largest f32 do not pack: try more of them
                if struct.pack("<f", float(digits)) == target:
                    break
            except OverflowError:
                continue
    from decimal import Decimal

    text = f"{Decimal(digits):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _escape(text: str, quote: str) -> str:
    """``text`` with the quote, backslash and control characters escaped. By table, in C:
    a guest's result string of many MiB escaped character by character in Python took
    seconds per MiB (red team: 25 s for 100 MiB)."""
    if _PLAIN.search(text) is None:
        return text
    return text.translate(_ESCAPES_BY_QUOTE[quote])


def _escape_table(quote: str) -> dict:
    table = {ord(c): e for c, e in _WRITE_ESCAPES.items()}
    for code in (*range(0x20), *range(0x7F, 0xA0)):
        table.setdefault(code, f"\\u{{{code:x}}}")
    table[ord(quote)] = "\\" + quote
    return table


_ESCAPES_BY_QUOTE = {q: _escape_table(q) for q in ("'", '"')}
# Anything _escape changes: quotes, the backslash, C0 and C1 controls and DEL.
_PLAIN = re.compile("[\"'\\\\\x00-\x1f\x7f-\x9f]")


def _label(name: str) -> str:
    return f"%{name}" if name in KEYWORDS else name


# ---------------------------------------------------------------- sizing


def printed_size(value: Any, t: WitType, limit: int) -> int:
    """How many bytes ``format(value, t)`` takes, without building it: exact for ASCII
    but for floats, for which an upper bound (their positional digits from ``repr``) is
    taken; non-ASCII characters at the width of their JSON escapes (``_escaped_width``).
    Counting stops once past ``limit``, so its cost is bounded by the limit, not by the
    value (a guest's result of millions of elements, red team round 30: f64s printed 320
    characters each and enum names of 4,000 characters, from a few bytes of memory)."""
    total = 0

    def add(n: int) -> bool:
        nonlocal total
        total += n
        return total > limit

    def walk(v: Any, t: WitType) -> bool:  # True: past the limit
        k = t.kind
        if k in INTS:
            return add(len(str(v)))
        if k in ("f32", "f64"):
            return add(_float_width(v))
        if k == "bool":
            return add(4 if v else 5)
        if k in ("char", "string"):  # (dozens of passes over it: red team rounds 37, 38)
            quote = "'" if k == "char" else '"'
            return add(2) or add(
                text_width(v, lambda part: _escaped_width(part, quote), limit - total)
            )
        if k == "enum":
            return add(len(_label(v)))
        if k == "flags":
            names = [n for n in t.items if n in v]
            return add(2 + sum(len(_label(n)) for n in names) + 2 * max(0, len(names) - 1))
        if k == "list":
            item = t.items[0]
            if add(2 + 2 * max(0, len(v) - 1)):
                return True
            if item.kind == "u8" and isinstance(v, (bytes, bytearray)):
                return add(decimal_digits(v))
            return any(walk(x, item) for x in paced(v, weight(item)))
        if k == "tuple":
            if add(2 + 2 * max(0, len(t.items) - 1)):
                return True
            return any(walk(x, e) for x, e in zip(v, t.items))
        if k == "record":
            if add(2 + 2 * max(0, len(t.items) - 1)):
                return True
            return any(add(len(_label(n)) + 2) or walk(v[n], f) for n, f in t.items)
        if k == "option":
            if v is None:
                return add(4)
            return add(6) or walk(v.value if isinstance(v, Some) else v, t.items[0])
        if k == "result":
            case, ptype = ("ok", t.items[0]) if isinstance(v, Ok) else ("err", t.items[1])
            if ptype is None:
                return add(len(case))
            return add(len(case) + 2) or walk(v.value, ptype)
        if k == "variant":
            ptype = case_types(t)[v.case]
            label = len(_label(v.case))
            return add(label) if ptype is None else add(label + 2) or walk(v.payload, ptype)
        return add(1)

    walk(value, t)
    return total


# Bytes under 10 and under 100: what translate() deletes to count the ones printed with
# two and with three digits.
# What each escaped character adds, by quote: the quote and backslash 1, tab, newline and
# return 1, the other controls their \u{..} form.
_ESCAPE_EXTRA = {
    quote: {code: len(text) - 1 for code, text in table.items()}
    for quote, table in _ESCAPES_BY_QUOTE.items()
}


def _escaped_width(text: str, quote: str) -> int:
    """At least the bytes of ``_escape(text, quote)`` once printed, and of the text as
    ``--json`` prints it: a non-ASCII character counts 6 (JSON's \\uXXXX), one beyond
    the BMP 12 (a surrogate pair), since the limit is in bytes (red team round 31: 24x
    the limit through --json from a string of emoji). Counted in C, never built."""
    width = len(text)
    if not text.isascii():
        ascii_ = len(text.encode("ascii", "ignore"))
        astral = len(text.encode("utf-16-le", "surrogatepass")) // 2 - width
        width += 5 * (width - ascii_ - astral) + 11 * astral
    if _PLAIN.search(text) is None:
        return width
    count = text.count
    return width + sum(count(chr(code)) * more for code, more in _ESCAPE_EXTRA[quote].items())


def _float_width(value: float) -> int:
    """At least len(format_float(value, kind)): ``repr``'s digits written positionally
    (f32 values print fewer digits than their f64 ``repr``)."""
    text = repr(value)
    if "e" not in text:
        return len(text)
    mantissa, _, exponent = text.partition("e")
    return len(mantissa) + abs(int(exponent)) + 2
