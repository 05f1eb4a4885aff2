"""``rlhb config``: the effective settings of a process, and the reference of every variable.

    rlhb config show [api|aggregator|trainer|all] [--json]   effective values, secrets masked
    rlhb config env  [api|aggregator|trainer|all] [--markdown] [--write-doc]

Every variable is declared in core/settings.py (the trainer's algorithm fields, set with
``RLHB_TRAINER_ALGO__<FIELD>``, in trainer/config.py and the algorithms' ``Config``
classes). docs/configuration.md holds the generated reference between two markers;
``rlhb config env --write-doc`` regenerates it and a test checks it is current.

Imports only typer at module level, so ``rlhb --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

config_app = typer.Typer(help="Show the effective settings of a process, or the reference of every variable.")

PROCESS_CHOICES = ("api", "aggregator", "trainer", "all")
DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
DOC_BEGIN = "<!-- BEGIN GENERATED: rlhb config env --write-doc -->"
DOC_END = "<!-- END GENERATED -->"
MASK = "***"
_SECRET_NAME = re.compile(r"token|secret|password|passwd|api_key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<user>[^\s:/@,]*):(?P<password>[^\s/@,]+)@")
_QUERY_SECRET = re.compile(r"(?P<key>(?:password|passwd|token|secret)=)[^&\s]+", re.IGNORECASE)
ALGO_PREFIX = "RLHB_TRAINER_ALGO"


@dataclass
class Variable:
    """One environment variable: where it goes and what it means."""

    name: str
    section: str
    default: str
    description: str
    aliases: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    """Attribute path in the settings object (for `show`)."""
    algorithms: str = ""
    """Trainer algorithm fields: the algorithms that have this field."""


# --------------------------------------------------------------------------- masking


def mask(name: str, value: Any) -> Any:
    """``value`` with secrets hidden: secret fields whole, passwords inside URLs and query strings."""
    if isinstance(value, dict):
        return {k: mask(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(name, v) for v in value]
    if not isinstance(value, str):
        return value
    if _SECRET_NAME.search(name) and value:
        return MASK
    value = _URL_PASSWORD.sub(lambda m: f"{m['user']}:{MASK}@", value)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", value)


# --------------------------------------------------------------------------- the reference


def _classes() -> dict[str, type]:
    from core.settings import AggregatorSettings, ApiSettings, TrainerSettings

    return {"api": ApiSettings, "aggregator": AggregatorSettings, "trainer": TrainerSettings}


def _text(value: Any) -> str:
    """A value as it is written in a variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, Path):
        home = str(Path.home())
        return "~" + str(value)[len(home) :] if str(value).startswith(home) else str(value)
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items()) if value else "(none)"
    return str(value)


def _default(field) -> Any:
    from pydantic_core import PydanticUndefined

    return field.default_factory() if field.default is PydanticUndefined else field.default


def _field_names(cls, name: str, field) -> tuple[str, tuple[str, ...]]:
    alias = field.validation_alias
    if alias is not None and hasattr(alias, "choices"):
        names = [str(c).upper() for c in alias.choices]
        return names[0], tuple(names[1:])
    return f"{cls.model_config.get('env_prefix', '')}{name}".upper(), ()


def settings_variables(process: str) -> list[Variable]:
    """The variables of one process's settings class (common ones under section "common")."""
    from pydantic import BaseModel

    from core.settings import CommonSettings

    cls = _classes()[process]
    out: list[Variable] = []
    for name, field in cls.model_fields.items():
        section = "common" if name in CommonSettings.model_fields else process
        var, aliases = _field_names(cls, name, field)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, subfield in annotation.model_fields.items():
                out.append(
                    Variable(
                        f"{var}__{sub.upper()}",
                        f"{process}.{name}",
                        _text(_default(subfield)),
                        subfield.description or "",
                        path=(name, sub),
                    )
                )
            continue
        if var == ALGO_PREFIX:
            continue  # expanded by algorithm_variables()
        description = field.description or ""
        if isinstance(_default(field), dict):
            var = f"{var}__<KEY>"
        out.append(Variable(var, section, _text(_default(field)), description, aliases, (name,)))
    return out


def _attribute_docs(cls: type) -> dict[str, str]:
    """``field -> docstring`` of a dataclass and its bases (the string under each field)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:] + [None], strict=True):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def algorithm_variables() -> list[Variable]:
    """``RLHB_TRAINER_ALGO__<FIELD>``: every field of every algorithm's Config, with its defaults."""
    import dataclasses

    from trainer.algorithms import ALGORITHMS, default_config

    rows: dict[str, dict] = {}
    for algorithm in ALGORITHMS:
        config = default_config(algorithm)
        docs = _attribute_docs(type(config))
        for f in dataclasses.fields(config):
            row = rows.setdefault(f.name, {"defaults": {}, "doc": docs.get(f.name, "")})
            row["defaults"][algorithm] = _text(getattr(config, f.name))
    out = []
    for name, row in rows.items():
        defaults = row["defaults"]
        distinct = set(defaults.values())
        default = distinct.pop() if len(distinct) == 1 else "; ".join(f"{a}: {v}" for a, v in defaults.items())
        var = f"{ALGO_PREFIX}__{name.upper()}"
        if any("=" in v for v in defaults.values()):  # a dict field: one variable per key
            var += "__<KEY>"
        algorithms = "all" if len(defaults) == len(ALGORITHMS) else ", ".join(defaults)
        out.append(Variable(var, "trainer.algo", default, row["doc"], path=("algo", name), algorithms=algorithms))
    return out


def reference(process: str = "all") -> list[Variable]:
    """Every variable of ``process`` ("all": every process, common ones once)."""
    processes = list(_classes()) if process == "all" else [process]
    seen: set[str] = set()
    out: list[Variable] = []
    for p in processes:
        for v in settings_variables(p):
            if v.name not in seen:
                seen.add(v.name)
                out.append(v)
        if p == "trainer":
            out.extend(algorithm_variables())
    return out


SECTION_TITLES = {
    "common": "Every process (`RLHB_*`)",
    "api": "API (`rlhb api`, `RLHB_API_*`)",
    "aggregator": "Aggregator (`rlhb aggregator`, `RLHB_AGG_*`)",
    "trainer": "Trainer (`rlhb trainer`, `RLHB_TRAINER_*`)",
    "trainer.gate": "Trainer: publication gate (`RLHB_TRAINER_GATE__<FIELD>`)",
    "trainer.algo": "Trainer: algorithm hyper-parameters (`RLHB_TRAINER_ALGO__<FIELD>`)",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if text else ""


def markdown(process: str = "all") -> str:
    """The reference as Markdown tables, one per section."""
    variables = reference(process)
    lines: list[str] = []
    for section, title in SECTION_TITLES.items():
        rows = [v for v in variables if v.section == section]
        if not rows:
            continue
        algo = section == "trainer.algo"
        lines += ["", f"### {title}", ""]
        if algo:
            lines += [
                "Checked against the configured algorithm when the trainer starts; the same fields as "
                "`rlhb train --set key=value`.",
                "",
                "| Variable | Algorithms | Default | Description |",
                "|---|---|---|---|",
            ]
        else:
            lines += ["| Variable | Default | Description |", "|---|---|---|"]
        for v in rows:
            name = f"`{v.name}`" + "".join(f" (or `{a}`)" for a in v.aliases)
            default = f"`{_cell(v.default)}`" if v.default else "(empty)"
            cells = (
                [name, v.algorithms, default, _cell(v.description)] if algo else [name, default, _cell(v.description)]
            )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).strip() + "\n"


def doc_with_reference(doc: str) -> str:
    """``doc`` with the text between the markers replaced by the current reference."""
    begin, end = doc.index(DOC_BEGIN) + len(DOC_BEGIN), doc.index(DOC_END)
    return doc[:begin] + "\n\n" + markdown("all") + "\n" + doc[end:]


# --------------------------------------------------------------------------- effective values


def _source(v: Variable) -> str:
    """``env`` (set by the variable itself), ``env (NAME)`` (by an alias or per-key variables) or ``default``."""
    present = {k.upper(): k for k in os.environ}
    for name in (v.name, *v.aliases):
        if name.endswith("__<KEY>"):
            stem = name[: -len("<KEY>")]
            if any(k.startswith(stem) for k in present):
                return f"env ({stem}*)"
        elif name in present:
            return "env" if name == v.name else f"env ({present[name]})"
    return "default"


def effective(process: str) -> list[dict]:
    """Rows ``{variable, value, source}`` of one process, secrets masked. Raises on invalid settings."""
    settings = _classes()[process]()
    if process == "trainer":
        from trainer.loop import build_gate_config

        settings = settings.model_copy(update={"gate": build_gate_config(settings)})  # the gate's seed
    rows = []
    variables = [v for v in reference(process) if v.section != "trainer.algo"]
    for v in variables:
        value: Any = settings
        for part in v.path:
            value = getattr(value, part)
        rows.append({"variable": v.name, "value": mask(v.path[-1], _jsonable(value)), "source": _source(v)})
    if process == "trainer":
        import dataclasses

        from trainer.loop import build_algorithm_config

        config = build_algorithm_config(settings, settings.algorithm)
        for f in dataclasses.fields(config):
            v = Variable(f"{ALGO_PREFIX}__{f.name.upper()}", "trainer.algo", "", "")
            value = _jsonable(getattr(config, f.name))
            if isinstance(value, dict):
                v.name += "__<KEY>"
            rows.append({"variable": v.name, "value": mask(f.name, value), "source": _source(v)})
    return rows


def _jsonable(value: Any) -> Any:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):  # masked by field name in mask(); `--reveal` shows it
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _processes(process: str) -> list[str]:
    from core.errors import fail

    if process not in PROCESS_CHOICES:
        fail(f"unknown process {process!r}; choose one of: {', '.join(PROCESS_CHOICES)}")
    return list(_classes()) if process == "all" else [process]


@config_app.command("show")
def show(
    process: str = typer.Argument("all", help="api | aggregator | trainer | all"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the effective settings of a process: variable, value (secrets masked), and where it came from."""
    from pydantic import ValidationError

    from core.errors import validation_message

    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for p in _processes(process):
        try:
            results[p] = effective(p)
        except ValidationError as e:
            errors[p] = mask("", validation_message(e, default="settings"))
        except ValueError as e:
            errors[p] = mask("", str(e))
    if as_json:
        typer.echo(json.dumps({**results, **({"errors": errors} if errors else {})}, indent=2, default=str))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        for p, rows in results.items():
            table = Table(title=f"rlhb {p}", title_justify="left")
            table.add_column("variable", no_wrap=True)
            table.add_column("value", overflow="fold")
            table.add_column("source", overflow="fold")
            for row in rows:
                value = row["value"]
                table.add_row(row["variable"], value if isinstance(value, str) else json.dumps(value), row["source"])
            console.print(table)
        for p, message in errors.items():
            typer.secho(f"error: {p}: {message}", fg=typer.colors.RED, err=True)
    if errors:
        raise typer.Exit(2)


@config_app.command("env")
def env(
    process: str = typer.Argument("all", help="api | aggregator | trainer | all"),
    as_markdown: bool = typer.Option(False, "--markdown", help="Print Markdown tables (the docs' format)."),
    write_doc: bool = typer.Option(False, "--write-doc", help=f"Regenerate the reference in {DOC_PATH.name}."),
) -> None:
    """Print every environment variable with its default and description (a generated reference)."""
    _processes(process)
    if write_doc:
        DOC_PATH.write_text(doc_with_reference(DOC_PATH.read_text()))
        typer.echo(f"wrote {DOC_PATH}")
        return
    if as_markdown:
        typer.echo(markdown(process), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("variable", no_wrap=True)
    table.add_column("default", overflow="fold")
    table.add_column("description", overflow="fold")
    for v in reference(process):
        table.add_row(v.name + "".join(f"\n(or {a})" for a in v.aliases), v.default, v.description)
    Console().print(table)
