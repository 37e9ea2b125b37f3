"""The ``hve`` connection form as each Airflow draws it, and what its Test button shows.

Airflow 3.2+ draws the form from the declarative ``conn-fields`` in :mod:`~airflow_provider_hve.get_provider_info`;
2.11 (Flask webserver) and 3.0/3.1 ask the hook for WTForms fields, built here from the same declaration. The
Test button runs :meth:`HveHook.test_connection <airflow_provider_hve.hooks.hve.HveHook.test_connection>` on a
copy of the form under a random connection id; :func:`form_test_message` puts the admin's connection id and
the form's labels back into what it says. Nothing here is imported while DAG files are parsed.
"""

from __future__ import annotations

import re
import sys
from typing import Any, ClassVar

from airflow_provider_hve.get_provider_info import get_provider_info

_STANDARD_LABELS = {"host": "SMTP host", "port": "Port", "login": "HVE account", "password": "Client secret / password"}


def _hve_connection_type() -> dict[str, Any]:
    (connection_type,) = get_provider_info()["connection-types"]
    return connection_type


def form_labels() -> dict[str, str]:
    """Return the label the form shows for each field: the standard ones as relabelled, then the extras."""
    connection_type = _hve_connection_type()
    labels = {**_STANDARD_LABELS, **connection_type["ui-field-behaviour"]["relabeling"]}
    labels.update({name: field["label"] for name, field in connection_type["conn-fields"].items()})
    return labels


def is_required(field: dict[str, Any]) -> bool:
    """Tell whether a ``conn-fields`` entry is required (its schema type allows no null)."""
    return "null" not in field["schema"]["type"]


def legacy_connection_form_widgets() -> dict[str, Any]:
    """
    Build the connection form for Airflow before 3.2 (``HveHook.get_connection_form_widgets``).

    The fields are the declarative ``conn-fields``, as WTForms fields: 2.11's Flask UI draws them, and 3.0/3.1
    turn them into the same JSON the 3.2 form reads (with WTForms mocked where it is not installed). On 2.11
    Auth mode is drawn as a select, the numbers as number inputs, and Tenant ID and Client ID are marked
    required (checked on save only for ``hve`` connections: the form class is shared by every connection type).
    3.0/3.1 drop validators and widgets: the description says "Required." there, and ``HveConnectionConfig``
    refuses a missing value anyway.
    """
    from wtforms import BooleanField, IntegerField, StringField
    from wtforms.validators import Optional, any_of

    from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS

    flask_form = not AIRFLOW_V_3_0_PLUS
    try:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget

        text_widget: dict[str, Any] = {"widget": BS3TextFieldWidget()}
    except ImportError:  # Airflow 3.0/3.1 with WTForms but without the FAB provider
        text_widget = {}
        flask_form = False

    widgets: dict[str, Any] = {}
    for name, field in _hve_connection_type()["conn-fields"].items():
        schema = field["schema"]
        kind = schema["type"] if isinstance(schema["type"], str) else schema["type"][0]
        description = field["description"]
        required = is_required(field)
        if required:
            description = f"Required. {description}"
        common: dict[str, Any] = {"description": description, "default": schema.get("default")}
        first: list[Any] = [_RequiredForHve(field["label"])] if required and flask_form else [Optional()]
        drawn: Any = None  # on 2.11: a select or a number input instead of FAB's text box
        if kind in ("integer", "number"):
            step = 1 if kind == "integer" else "any"
            drawn = _NumberInput(step, schema.get("minimum"), schema.get("maximum"))
        elif "enum" in schema:
            drawn = _Select(schema["enum"])
        widget = {"widget": drawn} if flask_form and drawn is not None else text_widget
        if kind == "boolean":
            widgets[name] = BooleanField(field["label"], **common)
        elif kind == "integer":
            widgets[name] = IntegerField(field["label"], validators=first, **common, **widget)
        elif kind == "number":
            # A fraction too (timeout 2.5): IntegerField refuses it, and 2.11 allows no FloatField (it drops every
            # field of the hook). A text field drawn as a number input, checked as a number; the connection reads
            # "2.5".
            validators = [*first, _number_at_least(schema.get("minimum"))]
            widgets[name] = StringField(field["label"], validators=validators, **common, **widget)
        else:
            validators = [*first, any_of(schema["enum"])] if "enum" in schema else first
            widgets[name] = StringField(field["label"], validators=validators, **common, **widget)
    return widgets


class _RequiredForHve:
    """
    Mark a 2.11 field required (FAB's asterisk, the browser's ``required``) and refuse it empty for ``hve``.

    2.11 keeps every provider's extra fields in one form class and removes other types' fields from the page,
    so a plain ``InputRequired`` would block saving every other connection type.
    """

    field_flags: ClassVar[dict[str, bool]] = {"required": True}

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, form: Any, field: Any) -> None:
        from wtforms.validators import StopValidation

        if str(field.data if field.data is not None else "").strip():
            return
        conn_type = getattr(getattr(form, "conn_type", None), "data", "hve")
        if conn_type != "hve":
            raise StopValidation("")  # another type's form: this field is not on the page; no error
        raise StopValidation(f"{self.label} is required for a Microsoft 365 High Volume Email connection.")


class _Select:
    """A Bootstrap ``<select>`` drawing a StringField: 2.11 accepts no SelectField from a hook."""

    def __init__(self, choices: list[str]) -> None:
        self.choices = choices

    def __call__(self, field: Any, **kwargs: Any) -> Any:
        from markupsafe import Markup, escape
        from wtforms.widgets import html_params

        kwargs.setdefault("id", field.id)
        kwargs["class"] = f"form-control {kwargs.get('class', '')}".strip()
        current = str(field.data or field.default or "").strip()
        chosen = current.lower()  # the connection reads auth_mode in any case ("Certificate" works in tasks)
        choices = list(self.choices)
        if chosen and chosen not in choices:
            # A value no option holds (set by the CLI, or a typo): shown as it is, so saving refuses it loudly
            # instead of the browser silently picking the first option.
            choices.append(current)
            chosen = current
        options = "".join(
            f'<option value="{escape(choice)}"{" selected" if choice == chosen else ""}>{escape(choice)}</option>'
            for choice in choices
        )
        return Markup(f"<select {html_params(name=field.name, **kwargs)}>{options}</select>")


class _NumberInput:
    """A Bootstrap ``<input type="number">`` (2.11 allows no FloatField; FAB's text widget takes any text)."""

    def __init__(self, step: Any, minimum: Any, maximum: Any) -> None:
        limits = (("step", step), ("min", minimum), ("max", maximum))
        self.limits = {key: value for key, value in limits if value is not None}

    def __call__(self, field: Any, **kwargs: Any) -> Any:
        from wtforms.widgets import NumberInput

        kwargs["class"] = f"form-control {kwargs.get('class', '')}".strip()
        return NumberInput(**self.limits)(field, **kwargs)


def _number_at_least(minimum: float | None) -> Any:
    """Return a WTForms validator: the text is a number (a fraction too), at least ``minimum``."""
    from wtforms.validators import ValidationError

    def validate(form: Any, field: Any) -> None:
        try:
            number = float(str(field.data).strip())
        except ValueError:
            number = float("nan")
        if not number >= (minimum if minimum is not None else float("-inf")):
            lowest = f", at least {minimum:g}" if minimum is not None else ""
            raise ValidationError(f"Enter a number{lowest}, such as 30 or 2.5.")

    return validate


def legacy_ui_field_behaviour() -> dict[str, Any]:
    """
    Return the declarative ``ui-field-behaviour`` in the shape ``HveHook.get_ui_field_behaviour`` returns.

    On 2.11 the Extra box stays shown: its page script saves the Extra editor before Test, and breaks (Test
    does nothing) on an Edit page where Extra was hidden before the editor was made.
    """
    from airflow_provider_hve._compat import AIRFLOW_V_3_0_PLUS

    behaviour = _hve_connection_type()["ui-field-behaviour"]
    hidden = list(behaviour["hidden-fields"])
    relabeling = dict(behaviour["relabeling"])
    if not AIRFLOW_V_3_0_PLUS:
        hidden.remove("extra")
        relabeling["extra"] = "Extra (JSON; the fields below fill it in)"
    return {"hidden_fields": hidden, "relabeling": relabeling, "placeholders": dict(behaviour["placeholders"])}


def airflow_test_connection_id(conn_id: str) -> str | None:
    """
    Return the connection id the admin typed, when ``conn_id`` is the random one of Airflow's Test button.

    Airflow's test endpoint (2.11: ``api_connexion``, 3.x: the public API) copies the form into a connection
    named by a random ``transient_conn_id`` and calls the hook; the id typed in the form is in its request body
    (``test_body`` on 3.x, ``body`` on 2.11), one of the callers up the stack. ``None`` when not called from there.
    """
    frame = sys._getframe(1)
    for _ in range(40):  # the endpoint is a few frames up: Connection.test_connection, then the route
        if frame.f_back is None:
            return None
        frame = frame.f_back
        scope = frame.f_locals
        if scope.get("transient_conn_id") != conn_id:
            continue
        body = scope.get("test_body")
        typed = getattr(body, "connection_id", None) if body is not None else None
        if typed is None and isinstance(scope.get("body"), dict):
            typed = scope["body"].get("connection_id")
        typed = typed.strip() if isinstance(typed, str) else ""
        # Echoed into the page: only an id Airflow itself would accept (3.x validates the body the same way).
        return typed if _CONN_ID.fullmatch(typed) else ""
    return None


_CONN_ID = re.compile(r"[\w.-]{1,200}")
_EXTRA = re.compile(r"\bextra (?:field )?'([a-z_]+)'")
_FIELD = re.compile(r"\bfield '(host|port|login|password)'")
_PASSWORD_FIELD = re.compile(r"\b(?:the connection's|the) Password field\b")
_CUSTOM_AUTHORITY = "set extra 'allow_custom_authority' to true"


def form_test_message(message: str, transient_id: str, typed_id: str) -> str:
    """
    Say ``message`` (from the hook's Test) in the form's words.

    The random connection id becomes the one typed (or "this connection" on a form whose id is empty), internal
    field names become the labels the form shows, and every line ends a sentence, so the text still reads when a
    UI joins its lines.

    :param message: what :meth:`HveHook.test_connection` would say.
    :param transient_id: the random id Airflow gave the copy of the form.
    :param typed_id: the connection id in the form, or ``""``.
    """
    labels = form_labels()
    for quoted in (repr(transient_id), f'"{transient_id}"'):
        if typed_id:
            message = message.replace(quoted, repr(typed_id))
        else:
            message = message.replace(f"Connection {quoted}", "This connection").replace(quoted, "this connection")
    message = message.replace(_CUSTOM_AUTHORITY, f"tick '{labels['allow_custom_authority']}'")
    message = _EXTRA.sub(lambda m: f"'{labels[m[1]]}'" if m[1] in labels else m[0], message)
    message = _FIELD.sub(lambda m: f"'{labels[m[1]]}'", message)
    message = _PASSWORD_FIELD.sub(f"the '{labels['password']}' field", message)
    message = re.sub(r"\bauth_mode '", f"{labels['auth_mode']} '", message)
    lines = [line.rstrip() for line in message.splitlines() if line.strip()]
    return "\n".join(line if line.endswith((".", "!", "?", ":")) else f"{line}." for line in lines)
