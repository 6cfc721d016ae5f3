"""Rebuild offline.html: DVC's plots page with Vega, Vega-Lite and vega-embed inlined.

`dvc plots show` fills .dvc/config's `plots.html_template` (this folder's
offline.html). DVC's own page loads the three libraries from a CDN and is blank
offline; this one carries their minified builds, taken verbatim from the npm
packages pinned below, so the page renders anywhere, also when moved or opened
from `dvc plots show -o elsewhere`. Their licenses are copied next to it.

Run `make plots-vendor` (needs npm and the registry) after changing a pin;
nothing else ever runs this file.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The majors DVC's default page asks for (vega@5, vega-lite@5, vega-embed@6), at
# their newest releases: DVC's 5.20.2 has the expression XSS fixed in 5.23.
PINS = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
# The vega package ships no LICENSE file; vega-view (same monorepo, same license)
# does. vega.min.js bundles d3 modules, all ISC under one copyright: d3-array's.
LICENSE_FROM = {"vega": "vega-view@5.16.1", "d3": "d3-array@3.2.5"}
# DVC replaces these (str.replace) in the template: none may occur in the scripts.
DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- linflow: Vega, Vega-Lite and vega-embed inlined (built by .dvc/plots/vendor.py)
         so this page renders with no network. -->
SCRIPTS
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def npm_pack(spec: str, dest: Path) -> Path:
    """The unpacked folder of the npm package `spec` (name@version)."""
    res = subprocess.run(
        ["npm", "pack", "--silent", spec], cwd=dest, capture_output=True, text=True
    )
    if res.returncode != 0:
        sys.exit(f"vendor.py: npm pack {spec} failed: {res.stderr.strip().splitlines()[-1:]}")
    tgz = dest / res.stdout.strip().splitlines()[-1]
    out = dest / spec.replace("/", "_")
    with tarfile.open(tgz) as tar:
        tar.extractall(out, filter="data")
    return out / "package"


def script_block(name: str, version: str, js: str) -> str:
    bad = [p for p in (*DVC_PLACEHOLDERS, "</script", "<!--") if p in js]
    if bad:
        sys.exit(f"vendor.py: {name} {version}'s build contains {bad}: cannot inline it")
    return (
        f'    <script data-package="{name}@{version}">'
        f"/*! {name} {version} (npm), BSD-3-Clause: .dvc/plots/LICENSE.{name} */\n"
        f"{js.strip()}\n</script>"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blocks = []
        for name, version in PINS.items():
            pkg = npm_pack(f"{name}@{version}", tmp)
            blocks.append(
                script_block(name, version, (pkg / "build" / f"{name}.min.js").read_text())
            )
            if (pkg / "LICENSE").is_file():
                (HERE / f"LICENSE.{name}").write_text((pkg / "LICENSE").read_text())
        for name, spec in LICENSE_FROM.items():
            (HERE / f"LICENSE.{name}").write_text((npm_pack(spec, tmp) / "LICENSE").read_text())
    page = PAGE.replace("SCRIPTS", "\n".join(blocks))
    assert not re.search(r"""src=["']https?:""", page)
    (HERE / "offline.html").write_text(page)
    print(f"wrote {HERE / 'offline.html'} ({len(page) // 1024} KiB)")


if __name__ == "__main__":
    main()
