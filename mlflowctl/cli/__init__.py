"""Command-line layer: parse, call one service, render. The only layer that prints.

Every `mlwf` process starts here, so this is where it declines optional imports that its
libraries try at import time and a synchronous command-line process never uses: httpcore's
trio support, httpx's own command-line tool (click, rich's syntax highlighting, pygments) and
tenacity's tornado support. A None entry makes each `import` fail fast, which each library
treats as "not installed". Together ~50 ms of CPU of a ~0.3 s `status` or `trigger`, which
matters when twenty of them share two cores (issue 22). Airflow's processes never import this
package's CLI, so they keep whatever they use.
"""

import sys

for _optional in ("trio", "tornado", "httpx._main"):
    sys.modules.setdefault(_optional, None)  # type: ignore[arg-type]
