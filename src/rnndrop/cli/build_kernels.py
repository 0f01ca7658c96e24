"""``rnndrop build-kernels``: compile the fused CPU kernel ahead of time (images, clusters, CI).

The same as ``python -m rnndrop._kernels.build``; without it the first call that needs the
kernel compiles it (:mod:`rnndrop._kernels.build`).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .._kernels import build

    p = sub.add_parser(
        "build-kernels",
        help="compile the fused CPU kernel into the kernel cache now, instead of on first use",
        description="Compile the fused CPU kernel for this interpreter, torch and CPU into the kernel cache "
        "($RNNDROP_KERNEL_DIR, else the per-user cache folder). Up to date: a no-op.",
    )
    build.add_arguments(p)
    p.set_defaults(run=build.run)
