"""Shakespeare as a stand-in "harmful" task, and the held-out metrics: perplexity exp(ℒ), top-1 and top-5 accuracy.

The paper attacks with a harmful data set (WMDP-bio relearning); we never use harmful content. The
stand-in is *adapting the model to a domain*: fine-tune toward one play (default Macbeth), measure the
loss on held-out blocks of the same play, and measure utility on different text (other plays).

The plays are plain UTF-8 files in the project's ``data/`` folder (public domain; provenance and licence
in ``data/README.md``), found by ``data_dir()``: ``$SPECDEF_LITE_DATA``, else the copy an installed wheel
carries (``specdef_lite/_data``), else ``data/`` of the checkout. No other package's files are read.

Blocks: the play is tokenised once, cut into non-overlapping blocks of ``seq_len`` tokens, and a seeded
random tenth of the blocks is held out, so no held-out token is ever trained on.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["data_dir", "shakespeare_plays", "play_text", "paper_results", "TextTask", "shakespeare_task", "batches",
           "lm_loss", "Eval", "evaluate"]

UTILITY_PLAYS = ("the-tempest", "twelfth-night", "julius-caesar", "richard-ii")
DATA_ENV = "SPECDEF_LITE_DATA"
_MARKER = "README.md"  # every copy of data/ carries its provenance file


def data_dir() -> Path:
    """The folder holding the course's texts and the paper's CSVs (see the module docstring for the order).

    A candidate counts only if it holds ``README.md``; ``$SPECDEF_LITE_DATA`` pointing elsewhere is an error.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        d = Path(env).expanduser()
        if not (d / _MARKER).is_file():
            raise FileNotFoundError(f"{DATA_ENV}={env} has no {_MARKER}: point it at the project's data/ folder")
        return d
    here = Path(__file__).resolve().parents[1]  # the specdef_lite package
    for d in (here / "_data", here.parent / "data"):  # installed wheel, then checkout / editable install
        if (d / _MARKER).is_file():
            return d
    raise FileNotFoundError(f"the course's data folder was not found (looked in {here / '_data'} and "
                            f"{here.parent / 'data'}); set {DATA_ENV} to the project's data/ folder")


def shakespeare_plays() -> dict[str, Path]:
    """{play name: text file} for the plays in ``data_dir()``, e.g. ``"macbeth"``."""
    root = data_dir()
    plays = {f.stem: f for f in sorted(root.glob("*.txt"))}
    if not plays:
        raise FileNotFoundError(f"no play (*.txt) found in {root}")
    return plays


def play_text(name: str) -> str:
    """The play as plain text, one line per verse line, speaker names on their own line (``data/<name>.txt``)."""
    plays = shakespeare_plays()
    if name not in plays:
        raise ValueError(f"unknown play {name!r}; choose one of: {', '.join(plays)}")
    return plays[name].read_text(encoding="utf-8")


def paper_results(name: str = "table1") -> list[dict[str, str]]:
    """The paper's reported numbers as rows of strings: ``"table1"`` (its Table 1) or ``"utility"``.

    Each row carries a ``source`` column; see ``data/README.md``. Only numbers from the paper are there.
    """
    files = {"table1": "paper_table1.csv", "utility": "paper_utility.csv"}
    if name not in files:
        raise ValueError(f"name must be one of {sorted(files)}, got {name!r}")
    with open(data_dir() / files[name], newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


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
    if not callable(getattr(tokenizer, "encode", None)):
        raise ValueError(f"tokenizer must have encode(text) -> token ids (a Hugging Face tokenizer), got {tokenizer!r}: "
                         f"the model folder may have no tokenizer files")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
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


def lm_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ℒ = −mean_{b,t} log softmax(z_{b,t})[x_{b,t+1}] over logits z (B, T, V) and tokens x (B, T), in float32+.

    Example:
        >>> round(float(lm_loss(torch.zeros(1, 3, 5), torch.tensor([[0, 1, 2]]))), 4)  # uniform: log 5
        1.6094
    """
    z = logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    return nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), x[:, 1:].reshape(-1))


@dataclass(frozen=True)
class Eval:
    """Mean next-token loss ℒ (nats), perplexity exp(ℒ), top-1 and top-5 next-token accuracy, over ``tokens`` predictions."""
    loss: float
    perplexity: float
    accuracy: float
    tokens: int
    top5: float = math.nan


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Eval:
    """ℒ = −(1/N) Σ log p(x_{t+1} | x_{≤t}), accuracy = mean[argmax p = x_{t+1}], top5 = mean[x_{t+1} ∈ top-5 of p].

    Args:
        model: run as it is (call ``.eval()`` first for dropout models); nothing is modified.
        tokens: blocks (N, T).
        forward: ``forward(x) -> logits`` (B, T, V) used instead of ``model(x).logits`` (e.g. a cached
            frozen prefix, ``llm.prefix.FrozenPrefix``); ``model`` then only gives the device.
    """
    dev = next(model.parameters()).device
    nll, correct, top5, count = 0.0, 0, 0, 0
    for i in range(0, len(tokens), batch_size):
        x = tokens[i:i + batch_size].to(dev)
        logits = (model(x).logits if forward is None else forward(x))[:, :-1].float()  # (B, T-1, V)
        y = x[:, 1:]
        nll += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 reduction="sum"))
        best = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, T-1, 5)
        correct += int((best[..., 0] == y).sum())
        top5 += int((best == y.unsqueeze(-1)).any(-1).sum())
        count += y.numel()
    loss = nll / count
    return Eval(loss, math.exp(min(loss, 700.0)), correct / count, count, top5 / count)
