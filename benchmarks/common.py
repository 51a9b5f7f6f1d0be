"""What the benchmark scripts share: their --quick / full sizes, and how a figure is finished."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def sized(args: argparse.Namespace, full: Mapping[str, Any], quick: Mapping[str, Any]) -> argparse.Namespace:
    """`args` with every size the command line left unset taken from `quick` (under --quick) or `full`."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def save_figure(fig: Any, axes: Sequence[Any], path: Path) -> None:
    """Grid and legend on each of `axes`, then the figure written to `path` (PNG) and closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
