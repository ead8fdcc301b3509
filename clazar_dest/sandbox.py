"""The Jinja2 sandbox rules shared by payload code templates (``flows.payloads``) and Salesforce mapping
expressions (``clazar_dest.salesforce.mapping.expressions``). Pure: no Django.

``BoundedSandbox`` is Jinja's immutable sandbox (no Python internals, no changing lists or dicts) plus:

- No str methods that format or pad (``format``, ``center``, ``zfill``, ...) and no ``%`` on text:
  ``'%0999999999d' % 1`` would allocate a gigabyte. The filters that pad or format (center, indent,
  wordwrap, format) and the ``lipsum`` global are removed too.
- ``*`` and ``+`` on text, lists and tuples, and ``~`` on anything, are refused before they would build a
  value longer than ``max_size``; ``*`` and ``**`` on whole numbers before they could build one of more
  than ``MAX_BITS`` bits (from the operands' bit lengths, an upper bound). ``7 % 3`` and ``'a' ~ 'b'`` work
  as usual.
- An unsafe attribute (``__class__``, ``format``) is refused where it is read, not returned as an
  undefined value that ``default`` or a chainable undefined could quietly swallow.

Each subclass sets ``max_size`` (characters any one value may have) and adds only what is its own. The
size of the final output is checked by the caller, which knows how to word that for a person.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_BITS = 100_000  # bits a whole number may reach through * or ** (about 30,000 digits)

# str methods that format or can allocate without bound; size-checked |replace and |join filters stand in
UNSAFE_STR = frozenset(
    {"format", "format_map", "center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"}
)
UNSAFE_FILTERS = ("center", "indent", "wordwrap", "format")
_SIZED = (str, list, tuple)


class _Generator(CodeGenerator):
    """Compiles ``a ~ b ~ c`` to a size-checked join instead of Jinja's plain one."""

    @optimizeconst
    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with bounded values; use with ``autoescape=False``."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    unsafe_str = UNSAFE_STR
    max_size = 100_000  # characters any one value may have; subclasses set their own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals.pop("lipsum", None)
        for name in UNSAFE_FILTERS:
            self.filters.pop(name, None)

    # --- the size checks (also for filters that build text: |replace, |join)

    def check_size(self, n: int) -> None:
        if n > self.max_size:
            raise SecurityError(f"a value would be longer than {self.max_size:,} characters")

    def check_bits(self, bits: int) -> None:
        if bits > MAX_BITS:
            raise SecurityError(f"a number would have more than {MAX_BITS:,} bits; use smaller numbers")

    def check_replace(self, text: str, old: str, new: str, count: int = -1) -> None:
        """Refuse ``text.replace(old, new, count)`` before it builds a value past ``max_size``."""
        hits = text.count(old) if old else len(text) + 1
        self.check_size(len(text) + (min(hits, count) if count >= 0 else hits) * (len(new) - len(old)))

    def checked_concat(self, items: Iterable[Any]) -> str:
        parts = [str(x) for x in items]
        self.check_size(sum(map(len, parts)))
        return "".join(parts)

    # --- what the sandbox calls

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in self.unsafe_str:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_message(self, obj: Any, attribute: str) -> str:
        """What a person reads after "refused by the sandbox:" for an unsafe attribute."""
        return f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe."

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(self.unsafe_message(obj, attribute))

    def wrap_str_format(self, value: Any) -> None:
        return None  # str.format is refused by is_safe_attribute instead of wrapped

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                self.check_bits(left.bit_length() + right.bit_length())
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, _SIZED) and isinstance(times, int):
                    self.check_size(len(seq) * times)
        elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
            self.check_size(len(left) + len(right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            self.check_bits(left.bit_length() * right)
        elif operator == "%" and isinstance(left, str):  # '%0999999999d' % 1 would allocate a gigabyte
            raise SecurityError("text formatting with % is not allowed; join text with ~")
        return super().call_binop(context, operator, left, right)
