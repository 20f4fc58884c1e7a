"""RAG prompts: Jinja templates (resources/prompts/*.jinja) rendered into a chat user turn.

The model's own chat template is applied later, by the generation backend.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


class PromptTemplate:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._template = _ENV.from_string(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"prompt template {self.path} not found") from e
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"{self.path}:{e.lineno}: template syntax error: {e.message}") from e

    def render(self, record: dict) -> str:
        """The template over the record's fields: a question with its `docs`, or a
        passage's `title` and `text` (doc -> query prompts)."""
        try:
            return self._template.render(**{"docs": [], **record}).strip()
        except jinja2.UndefinedError as e:  # a record without a field the prompt names
            raise ValueError(f"{self.path}: record {record.get('id')!r}: {e.message}") from e

    def conversation(self, record: dict) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.render(record)}]

    def module(self):
        """The template's macros and top-level variables (`{% set %}`), as attributes;
        the body is rendered over an empty question to make them."""
        try:
            return self._template.make_module({"docs": [], "question": ""})
        except jinja2.UndefinedError as e:
            raise ValueError(f"{self.path}: {e.message}") from e
