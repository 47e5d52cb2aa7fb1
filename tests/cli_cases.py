"""Run many `python <entry>.py <overrides>` command lines in this one process.

    python tests/cli_cases.py cases.json results.json

`cases.json` holds a list of [script, [args...]]. Each root script runs as `python script`
would run it (as `__main__`, with that `sys.argv`), with the process's stdout and stderr
captured at the file-descriptor level, so Hydra's, Rich's and Lightning's output all count.
`results.json` gets [exit code, output] per case. One process saves the ~5 s of imports a
subprocess per case would cost.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]


def _run_as_main(script: str) -> None:
    """Execute the root script `script` as `python script` does (its `__main__` block runs)."""
    spec = importlib.util.spec_from_file_location("__main__", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def run_case(script: str, args: list[str]) -> tuple[int, str]:
    """Run one command line; return (exit code, everything it printed)."""
    GlobalHydra.instance().clear()
    sys.argv = [str(ROOT / script), *args]
    with tempfile.TemporaryFile(mode="w+") as out:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out.fileno(), 1), os.dup2(out.fileno(), 2)
        try:
            _run_as_main(script)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # a crash: record it as the output's last line
            print(f"CRASH {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        out.seek(0)
        return code, out.read()


if __name__ == "__main__":
    cases_file, results_file = Path(sys.argv[1]), Path(sys.argv[2])
    results = [run_case(script, args) for script, args in json.loads(cases_file.read_text())]
    results_file.write_text(json.dumps(results))
