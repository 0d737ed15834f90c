"""Checkpoints: atomic, weights-only-loadable, keep the last K plus the best.

Layout of `RUN/checkpoints/step_XXXXXXXX/`:

    <net>.safetensors        network weights (state_dict names)
    <net>.ema.safetensors    EMA shadow weights (when the network has an EMA)
    optim.<name>.pt          {"optimizer": ..., "scheduler": ...} state dicts (torch.save;
                             read back with weights_only=True)
    rank<r>.json             per-process RNG states (python, numpy, torch, cuda) and the
                             data loader position
    state.json               step, engine counters, task extra state; written last

A checkpoint is written into `checkpoints/.tmp-step_XXXXXXXX/`, every file is fsynced, and
the directory is renamed to `step_XXXXXXXX` in one atomic `rename`. A directory named
`step_*` is therefore always complete; a killed write leaves only a `.tmp-*` directory,
which is never read and is removed on the next start. `index.json` ({"last", "best",
"best_metric", "best_value"}) is replaced atomically after each write; readers trust the
directories over the index (a kill between the rename and the index update leaves a newer
complete checkpoint than the index names).

Test hook: with the environment variable SOUNDRY_TEST_KILL_IN_CHECKPOINT=<step>, the process
SIGKILLs itself in the middle of writing the checkpoint of that step (after the weights,
before state.json and the rename). Only the resume tests set it.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from soundry.errors import SoundryError

CHECKPOINT_DIR = "checkpoints"
INDEX = "index.json"
STATE = "state.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{8,})$")


def step_name(step: int) -> str:
    """'step_00001234' for step 1234."""
    return f"step_{step:08d}"


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint directory name, None for anything else."""
    match = _STEP_RE.match(path.name)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- tensors


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a name -> tensor map as safetensors; tensors sharing memory are stored apart.

    (safetensors refuses aliased tensors; tied weights load back tied because
    `load_state_dict` copies into the live, still-shared parameters.)
    """
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    save_file(out, str(path), metadata=metadata)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as name -> tensor; a missing or unreadable file is a SoundryError
    that names it."""
    path = Path(path)
    if not path.is_file():
        raise SoundryError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SoundryError(
            f"cannot read {path}: it is not a valid safetensors file ({exc}); the file is "
            "truncated or corrupt"
        ) from None


def load_weights_only(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` with errors a user can act on.

    A file whose pickle asks for anything but tensors, numbers, strings and containers
    (for instance an object whose unpickling would run code) is refused, never loaded
    another way.
    """
    path = Path(path)
    if not path.is_file():
        raise SoundryError(f"checkpoint file {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        detail = f" (it asks for {found.group(1)})" if found else ""
        raise SoundryError(
            f"refusing to load {path}: it holds objects other than tensors and plain numbers"
            f"{detail}. soundry never writes such objects into a checkpoint, so the file "
            "was modified or does not come from soundry; nothing in it was run. Restore "
            "it from a trusted copy or resume from another checkpoint."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise SoundryError(
            f"cannot read {path}: {_first_sentence(exc)}; the file is truncated or corrupt"
        ) from None


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint; a missing or unparsable file is a SoundryError naming it."""
    path = Path(path)
    if not path.is_file():
        raise SoundryError(f"checkpoint file {path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SoundryError(
            f"cannot read {path}: it is not valid JSON ({exc}); the file is truncated or "
            "corrupt"
        ) from None


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def all_finite(networks: dict[str, nn.Module]) -> bool:
    """True when no parameter or floating buffer of any network holds NaN or Inf."""
    for net in networks.values():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return False
    return True


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as JSON-safe values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


# ----------------------------------------------------------------------------- files


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file and an atomic replace."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    """numpy / torch scalars and arrays in task or loader state -> plain JSON values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"checkpoint state holds a {type(value).__name__}, which JSON cannot store "
                    "(Task.extra_state and TrainLoader.state_dict must be JSON-serialisable)")


def _kill_hook(step: int) -> None:
    target = os.environ.get("SOUNDRY_TEST_KILL_IN_CHECKPOINT")
    if target and int(target) == step:
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- manager


class CheckpointManager:
    """Writes, lists, prunes and reads the checkpoints of one run directory.

    `barrier` synchronises processes (multi-process runs): every rank writes its own
    rank<r>.json into the temporary directory the main process created.
    """

    def __init__(
        self,
        run_dir: Path,
        keep_last: int,
        best_mode: str = "min",
        rank: int = 0,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        self.root = Path(run_dir) / CHECKPOINT_DIR
        self.keep_last = keep_last
        self.best_mode = best_mode
        self.rank = rank
        self.barrier = barrier or (lambda: None)
        self.best: str | None = None
        self.best_metric: str | None = None
        self.best_value: float | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- listing

    def complete(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            p for p in self.root.iterdir()
            if p.is_dir() and checkpoint_step(p) is not None and (p / STATE).is_file()
        ]
        return sorted(found, key=lambda p: checkpoint_step(p) or 0)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        found = self.complete()
        return found[-1] if found else None

    def remove_partial(self) -> list[Path]:
        """Delete leftovers of killed writes or deletions (.tmp-*, .trash-*); main only."""
        removed = []
        if self.is_main and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        return removed

    # -- best

    def is_better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.best_mode == "min" else value > self.best_value

    def set_best(self, name: str, metric: str, value: float) -> None:
        self.best, self.best_metric, self.best_value = name, metric, value

    # -- writing

    def save(
        self,
        step: int,
        networks: dict[str, nn.Module | dict[str, torch.Tensor]],
        ema_state: dict[str, dict[str, torch.Tensor]],
        optimizers: dict[str, dict[str, Any]],
        state: dict[str, Any],
        rank_state: dict[str, Any],
    ) -> Path:
        """Write the checkpoint of `step` atomically, update index.json, prune old ones.

        networks: name -> module, or its state dict (a sharded network's, gathered).
        optimizers: name -> {"optimizer": state_dict, "scheduler": state_dict | None}.
        state: JSON for state.json; rank_state: this process's JSON (rank<r>.json).
        Returns the final directory. Every process must call it (collective).
        """
        name = step_name(step)
        final = self.root / name
        tmp = self.root / f".tmp-{name}"
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        self.barrier()
        rank_file = tmp / f"rank{self.rank}.json"
        rank_file.write_text(json.dumps(rank_state, default=_json_default))
        _fsync_file(rank_file)
        self.barrier()
        if self.is_main:
            meta = {"step": str(step), "format": str(FORMAT_VERSION)}
            for net_name, net in networks.items():
                weights = net.state_dict() if isinstance(net, nn.Module) else net
                save_tensors(weights, tmp / f"{net_name}.safetensors",
                             {**meta, "network": net_name})
            for net_name, shadow in ema_state.items():
                save_tensors(shadow, tmp / f"{net_name}.ema.safetensors",
                             {**meta, "network": net_name, "ema": "1"})
            _kill_hook(step)
            for opt_name, opt_state in optimizers.items():
                torch.save(opt_state, tmp / f"optim.{opt_name}.pt")
            full_state = {"format": FORMAT_VERSION, "step": step, **state}
            (tmp / STATE).write_text(json.dumps(full_state, indent=1, default=_json_default))
            for p in tmp.iterdir():
                _fsync_file(p)
            _fsync_dir(tmp)
            if final.exists():  # the same step saved twice (e.g. best then end): replace
                self._discard(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            self.write_index(name)
            self.prune()
        self.barrier()
        return final

    def write_index(self, last: str) -> None:
        write_json_atomic(
            self.root / INDEX,
            {"last": last, "best": self.best, "best_metric": self.best_metric,
             "best_value": self.best_value},
        )

    def prune(self) -> None:
        """Keep the newest `keep_last` checkpoints plus the best one."""
        found = self.complete()
        keep = {p.name for p in found[-self.keep_last:]}
        if self.best:
            keep.add(self.best)
        for p in found:
            if p.name not in keep:
                self._discard(p)

    def _discard(self, path: Path) -> None:
        # rename first so a kill mid-delete never leaves a partial step_* directory
        trash = path.with_name(f".trash-{path.name}")
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # -- reading

    def read_state(self, path: Path) -> dict[str, Any]:
        state = read_json(path / STATE)
        if not isinstance(state, dict):
            raise SoundryError(f"{path / STATE} is not a checkpoint state (not a mapping)")
        if state.get("format") != FORMAT_VERSION:
            raise SoundryError(
                f"checkpoint {path} has format {state.get('format')}; this soundry reads "
                f"format {FORMAT_VERSION}"
            )
        return state

    def read_rank_state(self, path: Path) -> dict[str, Any]:
        rank_file = path / f"rank{self.rank}.json"
        if not rank_file.is_file():
            raise SoundryError(
                f"checkpoint {path} has no state for process {self.rank}; resume with the "
                "same number of processes it was written with"
            )
        state = read_json(rank_file)
        if not isinstance(state, dict):
            raise SoundryError(f"{rank_file} is not a checkpoint state (not a mapping)")
        return state

    @staticmethod
    def read_optimizer(path: Path, name: str) -> dict[str, Any]:
        file = path / f"optim.{name}.pt"
        state = load_weights_only(file)
        if not isinstance(state, dict) or not {"optimizer", "scheduler"} <= state.keys():
            raise SoundryError(f"{file} is not an optimizer state (expected a mapping with "
                               "'optimizer' and 'scheduler')")
        return state

    @staticmethod
    def read_network(path: Path, name: str, ema: bool = False) -> dict[str, torch.Tensor]:
        suffix = ".ema.safetensors" if ema else ".safetensors"
        return load_tensors(path / f"{name}{suffix}")
