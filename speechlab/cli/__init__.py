"""The ``speechlab`` command: the top layer of speechlab, which nothing in the library imports.

Training subcommands go to Lightning's CLI (``fit``, ``validate``, ``test``, ``predict``) with a
YAML recipe (``--config recipes/tiny/ctc.yaml``), through :class:`speechlab.cli.lightning.SpeechLabCLI`;
tool subcommands (``data synth``, ``data farfield``, ``data validate``, ``score``, ...) are plain
argparse commands.

A tool registers itself in :data:`TOOLS` as ``"module:command"``: the module (one per command
group in ``speechlab/cli/``) defines ``add_<command>_arguments(parser)`` and
``<command>(args) -> int``, whose docstring is the command's ``--help`` description
(:func:`load_tool`). A new command is a function pair in one of these modules (or a new module)
and one line here. Modules are imported only when their command runs, so ``speechlab score``
does not pay for importing torch or Lightning.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from speechlab.errors import CLIError, InputError
from speechlab.io import read_text

__all__ = ["CLIError", "TOOLS", "Tool", "load_tool", "main"]

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: command -> ("module:command", one-line help), or group -> {command -> ("module:command", help)}
TOOLS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "data": {
        "synth": ("speechlab.cli.data:synth", "synthesize the embedded espeak-ng corpus"),
        "farfield": ("speechlab.cli.data:farfield", "far-field copies of a manifest (RIR + noise)"),
        "validate": ("speechlab.cli.data:validate", "validate a manifest and report its problems"),
        "prepare": ("speechlab.cli.data:prepare",
                    "manifests of LibriSpeech, LJ Speech, Common Voice or CMU ARCTIC (lhotse)"),
    },
    "score": ("speechlab.cli.score:score", "WER/CER of hypotheses against references"),
    "grams": {
        "select": ("speechlab.cli.grams:select", "handpicked GramSet: unigrams + frequent n-grams"),
        "refine": ("speechlab.cli.grams:refine", "GramSet of the grams a trained model emits"),
    },
    "lm": {
        "ngram": ("speechlab.cli.lm:ngram", "train a KenLM n-gram LM (builds lmplz on first use)"),
    },
    "decode": ("speechlab.cli.decode:decode", "CTC/Gram-CTC greedy or beam (+KenLM) decoding"),
    "tcnlm": {
        "generate": ("speechlab.cli.tcnlm:generate", "sample sentences conditioned on a topic (mixture)"),
        "topics": ("speechlab.cli.tcnlm:topics", "top words of each topic of a TCNLM"),
        "coherence": ("speechlab.cli.tcnlm:coherence", "NPMI topic coherence of a TCNLM (and of LDA)"),
    },
}


def _tool_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The argparse tree; only the module of the command named in ``argv`` is imported."""
    parser = argparse.ArgumentParser(
        prog="speechlab",
        description="speechlab: train with 'speechlab fit --config RECIPE.yaml' "
        f"({', '.join(LIGHTNING_SUBCOMMANDS)}), or run a tool:",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_SUBCOMMANDS:
        sub.add_parser(name, help=f"Lightning {name} with a recipe (--config RECIPE.yaml)", add_help=False)
    words = list(argv[:2])
    for name, target in TOOLS.items():
        if isinstance(target, tuple):
            _add_tool(sub, name, target, load=words[:1] == [name])
        else:
            group = sub.add_parser(name, help=f"{name} tools: {', '.join(target)}")
            group_sub = group.add_subparsers(dest="tool", required=True, metavar="TOOL")
            for tool_name, tool in target.items():
                _add_tool(group_sub, tool_name, tool, load=words == [name, tool_name])
    return parser


@dataclass(frozen=True)
class Tool:
    """The functions of one tool command."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int | None]
    description: str | None


def load_tool(target: str) -> Tool:
    """Import the module of ``target`` (``"pkg.module:name"``) and return its command:
    ``add_<name>_arguments(parser)`` and ``<name>(args)``, described by the docstring of
    ``<name>``."""
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    main = getattr(module, name)
    return Tool(getattr(module, f"add_{name}_arguments"), main, _function_doc(main))


def _function_doc(fn: Callable) -> str | None:
    """The docstring of a module-level function as written: its lines lose the 4 spaces of the
    function body's indentation, and no more (:func:`inspect.getdoc` would also take away the
    indentation of examples when every later line is indented)."""
    if fn.__doc__ is None:
        return None
    first, *rest = fn.__doc__.strip().splitlines()
    return "\n".join([first, *(line.removeprefix("    ") for line in rest)])


def _add_tool(sub: argparse._SubParsersAction, name: str, tool: tuple[str, str], load: bool) -> None:
    target, help_text = tool
    p = sub.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
    if load:
        loaded = load_tool(target)
        p.description = loaded.description
        loaded.add_arguments(p)
        p.set_defaults(_main=loaded.main)


def config_files(argv: Sequence[str]) -> list[str]:
    """The recipe files named by ``-c``/``--config`` in a Lightning subcommand's arguments."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_config_files(argv: Sequence[str]) -> None:
    """Parse each ``--config`` YAML first, so that a syntax error names its file, line and
    column (Lightning's parser reports ``"<unicode string>"``). Missing files are left to
    Lightning, whose error names them."""
    import yaml

    for name in config_files(argv):
        path = Path(name)
        if not path.is_file():
            continue
        try:
            yaml.safe_load(read_text(path))
        except UnicodeDecodeError as e:
            raise CLIError(f"{path}: not a YAML recipe (not UTF-8 text: {e.reason})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            context = getattr(e, "context", None)
            reason = f"{context}: {problem}" if context else problem
            raise CLIError(f"{path}: YAML syntax error{where}: {reason}") from None


def run_lightning(argv: Sequence[str] | None) -> None:
    """Lightning's CLI over any LightningModule / LightningDataModule (recipes name them);
    ``argv=None`` reads ``sys.argv``."""
    from speechlab.cli.lightning import SpeechLabCLI

    check_config_files(sys.argv[1:] if argv is None else argv)
    SpeechLabCLI(args=None if argv is None else list(argv), parser_kwargs={"prog": "speechlab"})


def input_error(exc: BaseException) -> BaseException | None:
    """The user-input error in ``exc``'s chain (``exc`` itself, or what it wraps: jsonargparse
    wraps errors raised while it instantiates a recipe's classes), else ``None``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, (InputError, FileNotFoundError, FileExistsError)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        # bad input (a missing checkpoint or manifest, a GramSet that does not fit the model):
        # one line; anything else keeps its traceback
        try:
            run_lightning(None if from_command_line else argv)
        except Exception as e:
            cause = input_error(e)
            if cause is None:
                raise
            print(f"speechlab {argv[0]}: error: {cause}", file=sys.stderr)
            return 2
        return 0
    args = _tool_parser(argv).parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "tool", None))))
    try:
        return int(args._main(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # InputError is a ValueError
        print(f"speechlab {command}: error: {e}", file=sys.stderr)
        return 2
