"""Import a diffusers DDPM folder (UNet2DModel + DDPMScheduler) as a ddpmkit run, exactly or not at all.

    import_diffusers("ddpm-cifar10-32", "runs/ddpm-cifar10", dataset="cifar10")  # writes a run directory
    Run(**diffusers_folder.run_fields_from_diffusers("ddpm-cifar10-32"))  # the same run, nothing written

Reading and mapping the folder is ``diffusers_folder``; this module writes the run directory.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..train.checkpoint import save_checkpoint
from .diffusers_folder import read_diffusers
from .outputs import check_output, claimed_folder
from .rundir import RunDir

__all__ = ["import_diffusers"]


def import_diffusers(
    src: str | Path, out: str | Path | None = None, *, dataset: str | None = None, force: bool = False
) -> Path:
    """Write a diffusers DDPM folder as a ddpmkit run directory (config.yaml, checkpoints/step_00000000.pt with
    the weights as model and EMA weights, the source folder and its files' sha256 in the checkpoint's extra);
    return the run directory. ``out`` defaults to runs/NAME."""
    pretrained = read_diffusers(src, dataset)
    if out is None:
        out = Path("runs") / pretrained.config.name
        try:
            out.parent.mkdir(exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {str(out.parent)!r} for the run (give --out): {e.strerror or e}") from None
    run = RunDir(check_output(out, force, folder=True))
    if run.list_checkpoints():  # a newer step would hide the imported weights
        raise UserError(f"output {str(out)!r} holds a run's checkpoints; import into another directory")
    with claimed_folder(run.path, force):
        run.lay_out(pretrained.config)
        save_checkpoint(
            run.checkpoint(0),
            step=0,
            config=pretrained.config.to_dict(),
            model=pretrained.state,
            ema=pretrained.state,
            optimizer=None,
            rng=None,
            extra={"class_names": None, "source": pretrained.source},
        )
    return run.path
