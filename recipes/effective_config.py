"""The configuration ``speechlab fit`` builds from a recipe: its ``config:`` includes resolved and
every default filled in, as ``speechlab fit --config RECIPE --print_config`` prints it (the run
paths a recipe leaves to ``trainer.default_root_dir`` still null). Scripts that read or rewrite a
recipe start from this, not from the YAML file: a variant holds only the keys it changes.

  python recipes/effective_config.py recipes/tiny/ctc_stride8.yaml [RECIPE ...]   # YAML documents

  sys.path.insert(0, str(REPO / "recipes"))
  from effective_config import effective_configs
  ctc, s2s = effective_configs([REPO / "recipes/tiny/ctc.yaml", REPO / "recipes/tiny/seq2seq.yaml"])
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def effective_configs(recipes: Iterable[str | Path], in_process: bool = False) -> list[dict]:
    """One configuration (a dict) per recipe. By default read in one ``python -m speechlab.cli``
    process started from the checkout (as the scripts run ``speechlab fit``: this checkout's
    package, nothing imported here); ``in_process``: in this process (speechlab importable)."""
    recipes = [str(r) for r in recipes]
    if in_process:
        text = _printed(recipes)
    else:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(REPO), str(REPO / "recipes"), env.get("PYTHONPATH", "")] if p)
        code = "import sys, effective_config as e; sys.stdout.write(e._printed(sys.argv[1:]))"
        done = subprocess.run([sys.executable, "-c", code, *recipes], cwd=REPO, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"speechlab fit --print_config failed for {recipes}:\n"
                               + "\n".join(done.stderr.strip().splitlines()[-15:]))
        text = done.stdout
    return list(yaml.safe_load_all(text))


def _printed(recipes: list[str]) -> str:
    """The ``--print_config`` output of each recipe, as YAML documents."""
    from speechlab.cli import main

    out = []
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it gets both
    try:
        for recipe in recipes:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                try:
                    main(["fit", "--config", recipe, "--print_config"])
                except SystemExit as e:
                    if e.code not in (0, None):
                        raise RuntimeError(f"{recipe}: speechlab fit --print_config exited "
                                           f"with {e.code}") from None
            out.append("---\n" + buf.getvalue())
    finally:
        sys.argv = argv
    return "".join(out)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # this checkout's speechlab
    sys.stdout.write(_printed(sys.argv[1:]) if sys.argv[1:] else __doc__)
