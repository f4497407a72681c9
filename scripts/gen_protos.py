"""The only way to regenerate worker_sdk/_proto from protos/: pinned grpcio-tools, then an import rewrite.

Run `python scripts/gen_protos.py`; CI runs it again and fails when `git diff` shows drift.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "worker_sdk" / "_proto"
PACKAGE_PREFIX = "worker_sdk._proto"
# Generated code must match the protobuf/grpcio runtime pinned in pyproject.toml.
GRPCIO_TOOLS_VERSION = "1.85.1"


def main() -> int:
    import grpc_tools
    from grpc_tools import protoc

    installed = _version("grpcio-tools")
    if installed != GRPCIO_TOOLS_VERSION:
        print(f"gen_protos: need grpcio-tools=={GRPCIO_TOOLS_VERSION}, found {installed}", file=sys.stderr)
        return 2
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            print("gen_protos: protoc failed", file=sys.stderr)
            return 1
        if OUT.exists():
            shutil.rmtree(OUT)
        for src in sorted(Path(tmp).rglob("*")):
            if not src.is_file():
                continue
            dest = OUT / src.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_rewrite(src.read_text()))
    for pkg in [OUT, *[p for p in OUT.rglob("*") if p.is_dir()]]:
        (pkg / "__init__.py").write_text('"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n')
    print(f"gen_protos: wrote {sum(1 for _ in OUT.rglob('*.py*'))} files to {OUT.relative_to(ROOT)}")
    return 0


def _rewrite(text: str) -> str:
    # protoc emits absolute imports of the proto package (`from faultline.v1 import job_pb2`);
    # they must point inside the SDK so that nothing else needs to be on sys.path.
    return re.sub(r"^from faultline\.", f"from {PACKAGE_PREFIX}.faultline.", text, flags=re.MULTILINE)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
