"""Read pip-audit's JSON report (`pip-audit -f json`) and decide for CI.

Fails (exit 1) on any known vulnerability. pip-audit reports a dependency it could not look up
as skipped and still says "No known vulnerabilities found", so this also lists the skipped ones
and fails when a security-relevant package (the issue's list) was not audited, unless
BNLAB_AUDIT_ALLOW_UNAUDITED=1 (for a network where the advisory API is unreachable; see
README.md, "Dependency audit").

    python -m tests.security.audit_report pip-audit.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# The issue names these: a vulnerable version of any of them must never pass unnoticed.
CRITICAL = ("torch", "starlette", "fastapi", "celery", "kombu", "pydantic", "uvicorn",
            "python-multipart", "safetensors", "sqlalchemy", "h11")
# Known advisories we accept, with the reason (none today): {"VULN-ID": "why"}.
IGNORED: dict[str, str] = {}


def main(path: str) -> int:
    deps = json.loads(Path(path).read_text())["dependencies"]
    vulns = [(d["name"], d["version"], v["id"], v.get("fix_versions", []))
             for d in deps for v in d.get("vulns", []) if v["id"] not in IGNORED]
    skipped = sorted(d["name"] for d in deps if "skip_reason" in d)
    audited = len(deps) - len(skipped)
    print(f"pip-audit: {audited} of {len(deps)} installed distributions audited, "
          f"{len(vulns)} known vulnerabilities")
    for name, version, vid, fixes in vulns:
        print(f"  VULNERABLE {name} {version}: {vid} (fixed in {', '.join(fixes) or '?'})")
    if skipped:
        print(f"  not audited ({len(skipped)}): {', '.join(skipped)}")
    unaudited = [n for n in CRITICAL if n in skipped]
    if vulns:
        return 1
    if unaudited and os.environ.get("BNLAB_AUDIT_ALLOW_UNAUDITED") != "1":
        print(f"  FAIL: security-relevant packages not audited: {', '.join(unaudited)} "
              "(the advisory service did not answer for them; set "
              "BNLAB_AUDIT_ALLOW_UNAUDITED=1 only where it is known to be unreachable)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
