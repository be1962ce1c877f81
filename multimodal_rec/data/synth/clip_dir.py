"""A randomly initialised CLIP directory of the real classes: what ``--from-pretrained`` reads, without weights.

No pretrained weights can be downloaded here, so tests and ``mmrec bench encode`` run the pretrained-model path
on a small ``CLIPModel`` with a real (tiny) byte-level BPE ``CLIPTokenizer`` and a ``CLIPImageProcessor``, saved
as a user's downloaded directory would be. Its answers mean nothing; its shapes, files and code paths are CLIP's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# neither ImageNet's nor CLIP's statistics: a test sees that the directory's own are the ones used
IMAGE_MEAN, IMAGE_STD = [0.45, 0.5, 0.55], [0.25, 0.26, 0.27]
_MERGES = ["r e", "re d</w>", "l e", "le f", "lef t</w>", "c i", "ci r", "cir c", "l e</w>", "circ le</w>"]


@dataclass(frozen=True)
class ClipSize:
    """Widths of the random model: small enough for a test, CLIP's structure (ViT + text transformer + projections)."""

    width: int = 64  # hidden size of both transformers
    layers: int = 2  # layers of each
    heads: int = 2
    image_size: int = 64
    patch_size: int = 16
    projection_dim: int = 32  # the joint space
    max_positions: int = 40  # text positions (CLIP's: 77)


def write_clip_tokenizer(path: str | Path) -> int:
    """A tiny real CLIPTokenizer (every byte, a few merges) saved into ``path``; returns its vocabulary size."""
    from transformers import CLIPTokenizer

    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:] + [256 + i for i in range(256 - len(bs))]
    chars = [chr(c) for c in cs]
    merged = ["".join(m.split()) for m in _MERGES]
    vocab = [*chars, *(c + "</w>" for c in chars), *merged, "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(vocab))}))
        (Path(raw) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
        tok = CLIPTokenizer(str(Path(raw) / "vocab.json"), str(Path(raw) / "merges.txt"), pad_token="<|endoftext|>")
        tok.save_pretrained(path)
    return len(tok)


def make_clip_dir(out: str | Path, size: ClipSize = ClipSize(), seed: int = 0) -> Path:
    """Write a random ``CLIPModel`` directory (config, safetensors weights, tokenizer, image processor) to ``out``,
    replacing it atomically. Same ``seed`` and size, same weights."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        vocab = write_clip_tokenizer(tmp)
        common = dict(hidden_size=size.width, intermediate_size=2 * size.width, num_hidden_layers=size.layers)
        text = dict(
            **common, num_attention_heads=size.heads, vocab_size=vocab, max_position_embeddings=size.max_positions,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        )  # fmt: skip
        vision = dict(**common, num_attention_heads=size.heads, image_size=size.image_size, patch_size=size.patch_size)
        torch.manual_seed(seed)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim)
        CLIPModel(config).save_pretrained(tmp)
        side = size.image_size
        CLIPImageProcessor(size=side, crop_size=side, image_mean=IMAGE_MEAN, image_std=IMAGE_STD).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
