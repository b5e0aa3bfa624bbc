"""The ``fedguard craft`` command: write the malicious global model a dishonest server would send.

For red-teaming your own pipeline: craft ``ATTACK`` for your architecture,
then check that ``fedguard inspect`` (or your own defenses) catch it. The
crafters are :mod:`fedguard.attacks.craft`; the file is a weights-only
state_dict (``.pt``/``.pth``), ``.safetensors`` or ``.npz``, by the output's
suffix. Exit codes: 0 = written; 2 = usage or input error (one line).
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import click

from fedguard.errors import InputError
from fedguard.options import SEED, NamedPath, OutputFile, TorchCommand, input_paths, refuse_unused, user_code_prints_to_stderr

SUFFIXES = (".pt", ".pth", ".safetensors", ".npz")


def _crafter_names() -> list[str]:
    from fedguard.attacks.craft import CRAFTERS

    return CRAFTERS.names()


def _parse_options(pairs: tuple[str, ...]) -> dict[str, object]:
    """``--set KEY=VALUE`` pairs as crafter options (checked by the crafter against its signature)."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--set {pair!r} is not KEY=VALUE; write --set KEY=VALUE with a KEY that --list-options "
                             "shows for this attack")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()  # a bare word such as paper or identity
            value = {"true": True, "false": False}.get(value.lower(), value)  # as shells and YAML spell them
        if key in options:
            raise InputError(f"--set {key} is given twice ({options[key]!r} and {value!r}); give it once")
        options[key] = value
    return options


def serialise(state: dict, suffix: str) -> bytes:
    """A state_dict as the bytes of a weights-only ``.pt``, a ``.safetensors`` or an ``.npz`` file."""
    import numpy as np
    import torch

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if suffix == ".safetensors":
        from safetensors.torch import save

        return save({k: v.clone() for k, v in tensors.items()})  # no shared storage in safetensors
    buffer = io.BytesIO()
    if suffix == ".npz":
        np.savez(buffer, **{k: v.numpy() for k, v in tensors.items()})
    else:
        torch.save(tensors, buffer)
    return buffer.getvalue()


@click.command("craft", cls=TorchCommand)
@click.argument("attack", metavar="ATTACK", type=click.Choice(_crafter_names(), case_sensitive=False))
@click.option("--arch", metavar="NAME|module:callable", help="Architecture to craft (as for `fedguard inspect`); required unless --list-options.")
@click.option("--model", "model", type=NamedPath(), help="Start from these weights (default: a fresh seeded initialisation of --arch).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Classes of --arch (default: read off --model's head, else 10).")
@click.option("--input-shape", metavar="C,H,W", help="Input shape of --arch (default: the architecture's own).")
@click.option("--data", metavar="SPEC", help="The server's public data, to calibrate bins and thresholds (feature_fishing, imprint and loki read it): digits, images, a folder, or an .npz with x and y.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="A crafter option (repeatable); --list-options shows them.")
@click.option("--list-options", is_flag=True, help="List ATTACK's options and their defaults, then exit.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds the initialisation and the crafter.")
@click.option("-o", "--output", type=OutputFile("model.pt"), help="Where to write the crafted model: .pt, .pth, .safetensors or .npz (mode 0600); required unless --list-options.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
def craft_command(attack, arch, model, num_classes, input_shape, data, settings, list_options, seed, output, force):
    """Write the global model a malicious server would send for ATTACK (red-team your pipeline).

    Crafters follow the papers: mkor and mkor_inconspicuous (Wang et al.
    2024), class_fishing and
    feature_fishing (Wen et al. 2022), imprint (Fowl et al. 2022),
    trap_weights (Boenisch et al. 2023), loki (Zhao et al. 2024), oversized_fc.
    Then run `fedguard inspect OUTPUT --arch ARCH` to see it caught.
    """
    from fedguard.architectures import parse_input_shape, resolve_input_shape
    from fedguard.attacks.craft import READS_DATA, check_options, craft, crafter_options
    from fedguard.audit import load_global_model
    from fedguard.data import load_data
    from fedguard.io import check_output_path, write_atomic

    refuse_unused(attack not in READS_DATA, ("data",),
                  f"is read only by the crafters {', '.join(sorted(READS_DATA))} ({attack} crafts the same model without "
                  "it); craft one of those")  # fmt: skip
    options = _parse_options(settings)
    check_options(attack, options, with_data=data is not None)
    if list_options:  # with any --set given checked and shown in place of its default
        values = crafter_options(attack) | options
        listing = ", ".join(f"{k}={v!r}" + (" (--set)" if k in options else "") for k, v in values.items()) or "none"
        click.echo(f"{attack} options ({'defaults; yours marked --set' if options else 'defaults'}): {listing}")
        return
    if arch is None:
        raise InputError(f"give --arch, the architecture to craft (e.g. --arch lenet); see '{click.get_current_context().command_path} --help'")
    if output is None:
        raise InputError(f"give -o/--output, the file to write the crafted model to ({', '.join(SUFFIXES[:-1])} or {SUFFIXES[-1]})")
    suffix = output.suffix.lower()
    if output.is_dir():  # before the suffix: a folder named without one would be told to change its suffix
        raise InputError(f"--output {output} is a directory; name a file inside it, e.g. {output / 'model.pt'}")
    if suffix not in SUFFIXES:
        raise InputError(f"--output {output} has suffix {output.suffix or '(none)'}; use one of {', '.join(SUFFIXES)}")
    if model is not None and Path(model).is_dir():  # before the output check, which would call it an input folder
        raise InputError(f"--model {model} is a directory; pass the global model's file (.pt, .safetensors or .npz)")
    with user_code_prints_to_stderr():  # importing --arch runs its module's code
        check_output_path(output, inputs=input_paths(model, data=data, arch=arch), force=force, replaceable=None,
                          example="model.pt")  # fmt: skip
    with user_code_prints_to_stderr():
        shape = resolve_input_shape(arch, parse_input_shape(input_shape) if input_shape is not None else None)
        module, _ = load_global_model(model, arch, num_classes, shape, seed)
        public = load_data(data, input_shape=shape, limit=512, seed=seed)[0] if data else None
        crafted = craft(attack, module, input_shape=shape, num_classes=num_classes, data=public, seed=seed, **options)
    write_atomic(output, serialise(crafted.state_dict(), suffix))
    from fedguard.reports.base import printable, shell_words  # the file name is the user's

    check = ["fedguard", "inspect", str(output), "--arch", arch]  # with the options it was crafted with, or FG701 says drift
    if input_shape is not None:
        check += ["--input-shape", ",".join(map(str, shape))]
    if num_classes is not None:
        check += ["--num-classes", str(num_classes)]
    try:
        click.echo(printable(f"{attack}: crafted {arch} written to {output}; check it with: {shell_words(check)}"), err=True)
    except OSError:  # stderr full or closed: the model is written, which is what the exit code says
        pass
