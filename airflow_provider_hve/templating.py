"""How e-mail fields are templated, shared by :class:`HveEmailOperator` and :class:`HveNotifier`.

Four rules on top of Airflow's templating:

* Only the body fields (``html_content``, ``text_content``) may name a template file (``.html``, ``.j2``,
  ``.jinja2``, ``.txt``). Elsewhere a string is a string: ``files=["export.txt"]`` is an attachment path,
  not a template to load.
* ``html_content`` renders with autoescape on, so values from data or exception messages cannot inject
  markup; ``subject`` and ``text_content`` render as plain text.
* The body templates see extra variables (report rows, the notification facts) that the class adds
  after the other fields have been rendered.
* Fields that hold rows of data (``data``, ``recipients``) are data, not templates: an upstream task's
  output (XComArg) is resolved wherever it sits, and a top-level template string is rendered and read back
  as rows (JSON or a Python literal), but no string inside a row is ever rendered (a row value
  ``{{ conn.hve_default.password }}`` stays that text).

The rules live in ``_do_render_template_fields``, the hook Airflow calls for a plain task
(``render_template_fields``) and for a mapped one (``MappedOperator`` renders through the unmapped task's
``_do_render_template_fields``), so ``.partial().expand()`` gets the same rendering.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_hve.exceptions import HveConfigError

if TYPE_CHECKING:
    import jinja2

BODY_FIELDS = ("html_content", "text_content")
TEMPLATE_EXTENSIONS = (".html", ".j2", ".jinja2", ".txt")


class RowTemplating:
    """Mixin for an Airflow ``Templater``: the fields named in ``row_fields`` hold data rows, not templates."""

    row_fields: Sequence[str] = ()

    # Provided by Airflow's Templater.
    template_fields: Any
    render_template: Any

    def _do_render_template_fields(
        self,
        parent: Any,
        template_fields: Iterable[str],
        context: Any,
        jinja_env: jinja2.Environment,
        seen_oids: set[int],
    ) -> None:
        if parent is not self:  # an object nested in a field: Airflow's own rules
            super()._do_render_template_fields(  # type: ignore[misc]
                parent, template_fields, context, jinja_env, seen_oids
            )
            return
        self._render_own_fields(list(template_fields), context, jinja_env, seen_oids)

    def _render_own_fields(
        self, names: list[str], context: Any, jinja_env: jinja2.Environment, seen_oids: set[int]
    ) -> None:
        for name in names:
            self._render_field(name, context, jinja_env, seen_oids)

    def _render_field(self, name: str, context: Any, env: jinja2.Environment, seen: set[int]) -> None:
        import jinja2

        try:
            if name in self.row_fields:
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, self._render_rows(value, context, env, seen))
            else:
                super()._do_render_template_fields(self, [name], context, env, seen)  # type: ignore[misc]
        except jinja2.TemplateError as exc:
            # Jinja's message names the variable, not the field (Airflow only logs that): say both.
            raise HveConfigError(f"Argument {name!r}: the template failed: {type(exc).__name__}: {exc}.") from exc

    def _render_rows(self, value: Any, context: Any, env: jinja2.Environment, seen: set[int]) -> Any:
        """
        Resolve upstream outputs, call a callable, or render a top-level template string.

        An upstream output (XComArg) is resolved wherever it sits in the rows (``[{"n": t.output}]``), as
        Airflow resolves it; a callable field value is called with ``context`` and ``jinja_env``, as Airflow
        does. Strings inside rows are never rendered.
        """
        if id(value) in seen:  # already resolved by Airflow (a mapped task's expanded value)
            return value
        if isinstance(value, str):
            return rows_from_text(self.render_template(value, context, env, seen))
        if callable(value) and not isinstance(value, _resolve_mixin()):
            return value(context=context, jinja_env=env)
        return resolve_nested(value, context)


def _resolve_mixin() -> type[Any]:
    """Return Airflow's base class of run-time values (XComArg and the like)."""
    try:
        from airflow.sdk.definitions._internal.mixins import ResolveMixin
    except ImportError:  # pragma: no cover - Airflow 2
        from airflow.utils.mixins import ResolveMixin  # type: ignore[no-redef]
    return ResolveMixin


def resolve_nested(value: Any, context: Any) -> Any:
    """Resolve every run-time value (XComArg) in ``value`` at any depth; leave everything else, strings included."""
    if isinstance(value, _resolve_mixin()):
        return value.resolve(context)
    if value.__class__ is tuple:
        return tuple(resolve_nested(item, context) for item in value)
    if isinstance(value, list):
        return [resolve_nested(item, context) for item in value]
    if isinstance(value, dict):
        return {key: resolve_nested(item, context) for key, item in value.items()}
    if isinstance(value, set):
        return {resolve_nested(item, context) for item in value}
    return value


def rows_from_text(rendered: Any) -> Any:
    """
    Read rows from what a top-level template string rendered to.

    Without ``render_template_as_native_obj`` Jinja renders ``{{ ti.xcom_pull('extract') }}`` to the rows'
    Python text (``[{'a': None, 'b': True}]``), and ``{{ ... | tojson }}`` to JSON: both are read back as
    data (JSON, else a Python list literal; ``ast.literal_eval`` evaluates no code). Anything else is
    returned as it is, for the operator to refuse.
    """
    import ast
    import json

    if not isinstance(rendered, str):  # rendered as a native object already
        return rendered
    try:
        return json.loads(rendered)
    except ValueError:
        pass
    try:
        rows = ast.literal_eval(rendered.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return rendered
    # Only rows: "None" (an XCom that does not exist) stays text, for the operator's error to name.
    return rows if isinstance(rows, (list, tuple)) else rendered


class EmailTemplating(RowTemplating):
    """Mixin for an Airflow ``Templater`` (operator or notifier) that sends e-mail."""

    template_ext: Sequence[str] = TEMPLATE_EXTENSIONS
    _hve_rendering_body: str | None = None
    """The body field being rendered (a template file is read only for these), else None."""

    # Provided by Airflow's Templater.
    get_template_env: Any
    prepare_template: Any
    _render: Any

    def body_template_context(self, context: Any) -> dict[str, Any]:
        """Return the variables the body templates see in addition to Airflow's context."""
        return {}

    def resolve_template_files(self) -> None:
        """Load body fields that name a template file; other fields are never read as files."""
        env = self.get_template_env()
        for name in BODY_FIELDS:
            content = getattr(self, name, None)
            if isinstance(content, str):
                # At parse time a missing file is left as is: rendering names it (the DAG folder may differ).
                with contextlib.suppress(HveConfigError):
                    setattr(self, name, template_or_file(env, content, name))
        self.prepare_template()

    def render_template(
        self,
        content: Any,
        context: Any,
        jinja_env: jinja2.Environment | None = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        # Checked first, as Airflow's own render_template does: a mapped task's values that came from XCom
        # are in seen_oids, and data from XCom is never a template (not even a string).
        if seen_oids is not None and id(content) in seen_oids:
            return content
        if isinstance(content, str):
            env = jinja_env or self.get_template_env()
            if self._hve_rendering_body is not None:  # only a body field may name a template file
                content = template_or_file(env, content, self._hve_rendering_body)
            return self._render(env.from_string(content), context)
        return super().render_template(content, context, jinja_env, seen_oids)  # type: ignore[misc]

    def render_template_fields(self, context: Any, jinja_env: jinja2.Environment | None = None) -> None:
        """Render header fields, then the body with the extra variables and autoescaped HTML."""
        env = jinja_env or self._template_env(context)
        self._do_render_template_fields(self, self.template_fields, context, env, set())

    def _render_own_fields(
        self, names: list[str], context: Any, jinja_env: jinja2.Environment, seen_oids: set[int]
    ) -> None:
        super()._render_own_fields([n for n in names if n not in BODY_FIELDS], context, jinja_env, seen_oids)
        for key, value in self.body_template_context(context).items():
            context[key] = value
        try:
            if "html_content" in names:
                self._hve_rendering_body = "html_content"
                self._render_field("html_content", context, jinja_env.overlay(autoescape=True), seen_oids)
            if "text_content" in names:
                self._hve_rendering_body = "text_content"
                self._render_field("text_content", context, jinja_env, seen_oids)
        finally:
            self._hve_rendering_body = None

    def _template_env(self, context: Any) -> jinja2.Environment:
        dag = context.get("dag") if hasattr(context, "get") else None
        # dag.test() hands DAG callbacks the scheduler's serialized DAG, which has no template env.
        if dag is not None and not hasattr(dag, "get_template_env"):
            dag = None
        return self.get_template_env(dag=dag)


def default_environment() -> jinja2.Environment:
    """
    Return the Jinja environment used when the caller gives none: sandboxed, as Airflow's own.

    Row values and templates may come from outside the DAG's author (a CSV, an XCom); the sandbox refuses
    attribute access such as ``{{ ''.__class__.__mro__ }}`` that would reach Python internals.
    """
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment()


def template_file_source(env: jinja2.Environment, path: str, argument: str = "html_content") -> str | None:
    """
    Return the source of a template file, or None if there is no such file.

    A relative path is looked up through the environment's loader only (the DAG's folder and its
    ``template_searchpath``), and may not climb out of them with ``..``; the working directory is used only when
    the environment has no loader (a hook or ``bulk.MailMerge`` used without a DAG). An absolute path is read as
    written: the DAG's author chose it.

    :raises HveConfigError: for a relative path with a ``..`` component.
    """
    if not os.path.isabs(path):
        if ".." in path.replace("\\", "/").split("/"):
            raise HveConfigError(
                f"Argument {argument!r}: template file {path!r} climbs out of the template folder with '..'. Template "
                f"paths are relative to the DAG's folder and its template_searchpath and stay inside them: move the "
                f"file there, add its folder to the DAG's template_searchpath, or give an absolute path."
            )
        if env.loader is not None:
            try:
                return env.loader.get_source(env, path)[0]
            except Exception:
                return None
    elif env.loader is not None:
        with contextlib.suppress(Exception):
            return env.loader.get_source(env, path)[0]
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    return None


def template_or_file(env: jinja2.Environment, value: str | None, argument: str) -> str | None:
    """Return ``value``, or the file's source when ``value`` names a template file (``.html``, ``.j2``...)."""
    if value is None or not value.endswith(TEMPLATE_EXTENSIONS):
        return value
    source = template_file_source(env, value, argument)
    if source is None:
        raise HveConfigError(
            f"Argument {argument!r}: template file {value!r} was not found. Relative paths are looked up in the "
            f"DAG's folder and its template_searchpath; or give an absolute path."
        )
    return source
