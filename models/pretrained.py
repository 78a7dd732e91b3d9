"""timm's pretrained weights (``model.pretrained: true``): fetched and cached by timm itself, with one clear
error when they cannot be had (offline, or none published).

timm downloads from the Hugging Face Hub (cached under ``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``) or, for older weights, from a URL (cached under ``torch.hub.get_dir()/checkpoints``).
A machine without network fails here with a message naming that folder and ``model.pretrained_path``, the way
to use a weights file copied by hand.
"""

from __future__ import annotations

import os

import timm

from models.errors import ConfigError


def weights_source(name: str) -> tuple[str, str]:
    """(where timm fetches ``name``'s default pretrained weights from, the cache folder it keeps them in)."""
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        return f"the Hugging Face Hub ({cfg['hf_hub_id']})", str(constants.HF_HUB_CACHE)
    if cfg.get("url"):
        import torch

        return cfg["url"], os.path.join(torch.hub.get_dir(), "checkpoints")
    if cfg.get("file"):
        return cfg["file"], os.path.dirname(cfg["file"])
    raise ConfigError(f"model.pretrained=true, but timm publishes no pretrained weights for {name!r}; pick a "
                      f"model with weights (timm.list_models({name.split('_')[0] + '*'!r}, pretrained=True)), or "
                      f"set model.pretrained=false")


def is_download_error(err: BaseException) -> bool:
    """Whether ``err`` is timm failing to fetch weights (no network, offline mode, a missing cache entry)."""
    module = type(err).__module__ or ""
    return isinstance(err, OSError) or module.startswith(("huggingface_hub", "requests", "urllib", "http"))


def offline_error(name: str, err: BaseException) -> ConfigError:
    source, cache = weights_source(name)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return ConfigError(
        f"model.pretrained=true: timm could not fetch the pretrained weights of {name!r} from {source} "
        f"({type(err).__name__}: {first[:200]}); this machine looks offline. Either run once where there is network "
        f"(timm caches the weights in {cache}; copy that folder here), or put a timm weights file (.safetensors, "
        f".bin or .pth) on this machine and set model.pretrained_path=FILE with model.pretrained=false")


def check_choice(pretrained: bool, pretrained_path: str | None) -> None:
    if pretrained and pretrained_path:
        raise ConfigError(f"model.pretrained=true and model.pretrained_path={pretrained_path!r} both name weights; "
                          f"keep one (pretrained_path: a local file; pretrained: timm's download)")
