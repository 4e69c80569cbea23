"""What a user sees when a ``repro`` command cannot run as given: one line, not a traceback.

* The command line or a config does not parse (jsonargparse's error, raised rather than printed,
  ``exit_on_error=False``): :func:`condensed` turns its nested report into the option, the value
  and what the option accepts; exit status 2. Config files are checked first
  (:func:`check_config_files`): an empty one, or one that is not a mapping of options, is named.
* A value our own code refused or a file it could not use: an exception raised by a ``raise``
  statement in this repository (:func:`user_error`): a ``ValueError`` naming the field, the data
  modules' ``DatasetError``/``CorpusError``, a ``FileNotFoundError`` naming the path, ... One line,
  exit status 2 for a refused value or file (``ValueError``, ``OSError``), 1 for the others.
  Errors that a library wraps (jsonargparse wraps each constructor's error) are found in the
  exception's chain.
* Anything else is a bug and keeps its traceback. ``--debug`` or ``REPRO_DEBUG=1`` keeps every
  traceback.
"""

from __future__ import annotations

import argparse
import difflib
import dis
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "REPRO_DEBUG"
USAGE = 2  # exit status of a command that was given something it cannot use (argparse's)
PREFIX = "repro: error: "
OWN_CODE = [Path(__file__).resolve().parents[2] / package
            for package in ("optimizers", "reproductions", "datamodules")]
RAISE = dis.opmap["RAISE_VARARGS"]


def debug_mode() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def take_debug_flag(argv: list[str]) -> bool:
    """Remove ``--debug`` from ``argv`` (in place); True if it was there."""
    found = DEBUG_FLAG in argv
    argv[:] = [arg for arg in argv if arg != DEBUG_FLAG]
    return found


def one_line(message: str) -> str:
    return " ".join(message.split())


# ----------------------------------------------------------------------- errors of our own code
def raised_by_own_code(error: BaseException) -> bool | None:
    """True: a ``raise`` statement in this repository; False: elsewhere in this repository (an
    implicit error: a bug); None: outside it (a library)."""
    tb = error.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    if not any(path.is_relative_to(root) for root in OWN_CODE):
        return None
    return tb.tb_frame.f_code.co_code[tb.tb_lasti] == RAISE


def user_error(error: BaseException) -> BaseException | None:
    """The error in ``error``'s chain that our own code raised for the user, or None (a bug).

    The chain is followed only through errors that a library raised (jsonargparse reports each
    constructor's error in a ValueError of its own); an implicit error in our code is a bug even
    when it happened while handling a user error."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        own = raised_by_own_code(error)
        if own is not None:
            usable = isinstance(error, (ValueError, OSError, RuntimeError)) and not isinstance(
                error, (NotImplementedError, RecursionError))
            return error if own and usable else None
        error = error.__cause__ or error.__context__
    return None


def exit_status(error: BaseException) -> int:
    return USAGE if isinstance(error, (ValueError, OSError)) else 1


@contextmanager
def reported() -> Iterator[None]:
    """Around a whole command: a user error ends as one line on stderr and its exit status."""
    try:
        yield
    except Exception as error:
        found = user_error(error)
        if found is None or debug_mode():
            raise
        print(PREFIX + one_line(str(found)), file=sys.stderr)
        raise SystemExit(exit_status(found)) from None


@contextmanager
def usage_errors_reported() -> Iterator[None]:
    """Around parsing with ``exit_on_error=False``: a parse error ends as one line and exit
    status 2, as argparse's own errors do."""
    try:
        yield
    except argparse.ArgumentError as error:
        if debug_mode():
            raise
        print(PREFIX + condensed(str(error)), file=sys.stderr)
        raise SystemExit(USAGE) from None


# ------------------------------------------------------------------------------ config files
def config_arguments(argv: list[str]) -> list[str]:
    """The values of ``-c``/``--config`` in ``argv``."""
    found = []
    for index, arg in enumerate(argv):
        if arg in ("-c", "--config") and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif arg.startswith("--config="):
            found.append(arg.partition("=")[2])
    return found


def check_config_files(argv: list[str]) -> None:
    """Every ``-c`` file that exists holds a YAML mapping of options; raises ArgumentError naming
    the file otherwise (jsonargparse would say only ``Unexpected config``)."""
    for value in config_arguments(argv):
        path = Path(value)
        if not path.is_file():
            continue  # jsonargparse names a missing file itself
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(error, "problem", None) or str(error)
            raise argparse.ArgumentError(
                None, f"--config {value}: not valid YAML{where}: {one_line(problem)}") from error
        if content is None:
            raise argparse.ArgumentError(
                None, f"--config {value}: the file holds no options; a config is a YAML mapping "
                      "such as `trainer: {max_steps: 100}`")
        if not isinstance(content, dict):
            raise argparse.ArgumentError(
                None, f"--config {value}: holds a YAML {type(content).__name__}, expected a "
                      "mapping of options such as `trainer: {max_steps: 100}`")


# ---------------------------------------------------------------------- jsonargparse's report
NOISE = re.compile(r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|"
                   r"Given value type: .*|Given value: .*|Expected a path but .*|"
                   r"Expected a <class '(NoneType|bool)'>)$")
PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
CLASS_PROBLEM = re.compile(r"^Problem with given class_path '([^']+)':$")
OPTION_REFUSED = re.compile(r"Option '([^']+)' is not accepted")
CALLABLE_PREFIX = re.compile(r"^Type typing\.Callable\[\[.*?\], ([\w.]+)\] expects a function or "
                             r"a callable class: ")


def report_paths(message: str) -> list[list[str]]:
    """The root-to-leaf paths of jsonargparse's indented report, one list of lines each."""
    paths: list[list[str]] = []
    stack: list[tuple[int, str]] = []
    for raw in message.splitlines():
        if not raw.strip():
            continue
        text = raw.strip()
        indent = len(raw) - len(raw.lstrip()) + (2 if text.startswith("- ") else 0)
        text = text.removeprefix("- ")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack and paths and paths[-1] == [line for _, line in stack]:
            paths.pop()  # the parent was taken for a leaf: it has a child
        stack.append((indent, text))
        paths.append([line for _, line in stack])
    return paths


def import_object(dotted: str) -> object | None:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def argument_names(class_path: str) -> list[str]:
    """The keyword arguments a class takes, as jsonargparse resolves them: a ``**kwargs`` passed
    on to the base class adds the base class's arguments."""
    cls = import_object(class_path)
    names: list[str] = []
    for owner in inspect.getmro(cls) if inspect.isclass(cls) else ():
        try:
            parameters = inspect.signature(owner).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in parameters if p.name not in names and p.name != "params"
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def classes_of(module_name: str, base: type | None) -> list[str]:
    """The public classes of ``module_name`` (its ``__all__``, else those defined in it),
    subclasses of ``base`` when given."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    names = getattr(module, "__all__", None) or [
        name for name, value in vars(module).items()
        if getattr(value, "__module__", None) == module_name and not name.startswith("_")]
    return [f"{module_name}.{name}" for name in names
            if inspect.isclass(value := getattr(module, name, None))
            and (base is None or issubclass(value, base))]


def explained(leaf: str, classes: list[str], base: str | None) -> tuple[str | None, str]:
    """(the value the leaf names, what is wrong and what is accepted) for one leaf message."""
    if match := OPTION_REFUSED.search(leaf):
        option = match.group(1)
        owner = (re.findall(r"class_path='([^']+)'", leaf) or classes or ["the class"])[-1]
        names = argument_names(owner)
        close = difflib.get_close_matches(option, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        accepted = f"; it takes {', '.join(names)}" if names else ""
        return None, f"{owner} has no argument '{option}'{hint}{accepted}"
    if match := re.search(r"module '([\w.]+)' has no attribute '(\w+)'", leaf):
        module, name = match.groups()
        base_class = import_object(base) if base else None
        candidates = classes_of(module, base_class if inspect.isclass(base_class) else None)
        kind = base.rpartition(".")[2] if base else "class"
        accepted = (f"; accepted: {', '.join(candidates)}, or the import path of another {kind}"
                    if candidates else f"; give the import path of a {kind}")
        return f"{module}.{name}", f"{module} has no {name}{accepted}"
    if match := re.search(r"No module named '([\w.]+)'", leaf):
        return None, f"there is no module {match.group(1)}"
    if match := re.match(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)$", leaf):
        choices = ", ".join(choice.strip().strip("'\"") for choice in match.group(1).split(","))
        return match.group(2), f"accepted: {choices}"
    if match := re.match(r"Expected a <class '(\w+)'>\. Got value: (.*)$", leaf):
        kind = {"int": "an integer", "float": "a number", "str": "a string",
                "bool": "true or false"}.get(match.group(1), f"a {match.group(1)}")
        return match.group(2), f"expected {kind}"
    if match := re.match(r"File does not exist: '(.*)'$", leaf):
        return match.group(1), "no such file"
    return None, leaf


def condensed(message: str) -> str:
    """jsonargparse's error report in one line: ``--option value: what is wrong; accepted: ...``.

    The report nests one block per union alternative and class tried; the deepest informative
    line names the cause, and the keys and classes on its way name the option."""
    paths = [path for path in report_paths(message) if not NOISE.match(path[-1])]
    if not paths or not message.startswith('Parser key "'):
        hint = "; `repro fit --help` lists them" if message.startswith("unrecognized") else ""
        return one_line(message) + hint
    path = max(paths, key=len)  # the deepest cause; the first of equals
    keys: list[str] = []
    classes: list[str] = []
    base = None
    for line in path:
        if match := PARSER_KEY.match(line):
            keys.append(match.group(1))
            line = match.group(2)
        elif match := CLASS_PROBLEM.match(line):
            classes.append(match.group(1))
            keys.append("init_args")
        if match := CALLABLE_PREFIX.match(line):
            base = match.group(1)  # the innermost expected type: an optimizer's
    subtypes = re.search(r"Subtypes: \[<class '([\w.]+)'>", message)
    base = base or (subtypes.group(1) if subtypes else None)
    leaf = CALLABLE_PREFIX.sub("", PARSER_KEY.sub(r"\2", path[-1]))
    value, explanation = explained(leaf, classes, base)
    if match := OPTION_REFUSED.search(leaf):
        keys += ["init_args", match.group(1)] if "class_path=" in leaf else [match.group(1)]
    given = re.search(r"^\s*Given value: (NestedArg\(key='[^']*', val='(.*)'\)|([^(\n]*))$",
                      message, re.M)
    if given:
        value = given.group(2) if given.group(2) is not None else given.group(3)
    option = "--" + ".".join(key for index, key in enumerate(keys)
                             if not (key == "init_args" and index + 1 == len(keys)))
    return f"{option}{f' {value}' if value is not None else ''}: {explanation}"
