"""Launchers: run trial processes locally, on Ray or on Slurm (see ``process`` for what every launcher
shares: trial logs, process groups, failure reasons)."""

from __future__ import annotations

from pathlib import Path

from curation.recipe.selection import LocalLauncherConfig, RayLauncherConfig, SlurmLauncherConfig
from curation.selection.launchers.local import LocalLauncher
from curation.selection.launchers.process import Launcher
from curation.selection.launchers.ray import RayLauncher
from curation.selection.launchers.slurm import SlurmLauncher


def make_launcher(
    cfg: LocalLauncherConfig | RayLauncherConfig | SlurmLauncherConfig,
    sweep_dir: Path,
    command_prefix: list[str] | None = None,
    ray_address: str | None = None,
) -> Launcher:
    """The launcher a recipe's ``launcher`` config asks for (Slurm job files under ``<sweep>/slurm`` by default).
    A ``ray`` launcher without an address of its own joins ``ray_address`` (the command's ``--address``)."""
    if isinstance(cfg, LocalLauncherConfig):
        return LocalLauncher(cfg, command_prefix)
    if isinstance(cfg, RayLauncherConfig):
        if cfg.address is None and ray_address is not None:
            cfg = cfg.model_copy(update={"address": ray_address})
        return RayLauncher(cfg, command_prefix)
    return SlurmLauncher(cfg, Path(cfg.folder) if cfg.folder else Path(sweep_dir) / "slurm", command_prefix)
