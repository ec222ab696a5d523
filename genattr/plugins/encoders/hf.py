"""The Hugging Face encoders: ``clip:`` (``transformers.CLIPModel``), ``dino:`` (``ViTModel``) and ``dinov2:``
(``Dinov2Model`` / ``Dinov2WithRegistersModel``).

Images are converted to RGB, resized (shortest edge, bicubic, antialiased) and centre-cropped as the model's
image-processor configuration says (``preprocessor_config.json``; the model config's ``image_size`` and the family's
usual statistics when absent), and normalised with the processor's mean / std. A local directory loads with
``local_files_only=True``; a hub id is looked up in the local Hugging Face cache first and downloaded only when the
hub is reachable. When neither works, one :class:`~genattr.harness.errors.UserError` line names the setting to
change (``setting`` option, e.g. ``clip.model``).

transformers and torch are imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Sequence

from genattr.harness.errors import UserError

from .base import ENCODER_VERSION, Encoder

DEFAULT_MODELS = {
    "clip": "openai/clip-vit-base-patch32",
    "dino": "facebook/dino-vitb16",
    "dinov2": "facebook/dinov2-with-registers-large",
}

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlparse(endpoint)
    try:
        with socket.create_connection((u.hostname or "huggingface.co", u.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_pretrained(cls, kind: str, ref: str, setting: str, **kwargs):
    """``cls.from_pretrained(ref)``: a directory with ``local_files_only``; a hub id from the local cache first,
    then the hub when reachable. Any failure becomes one UserError line naming ``setting``."""
    hint = f"set {setting.split('.')[-1]}=/path/to/{kind} (e.g. --set {setting}=DIR)"
    p = Path(ref).expanduser()
    looks_like_path = p.is_absolute() or ref.startswith((".", "~")) or p.exists()
    if looks_like_path:
        if not p.is_dir():
            raise UserError(f"{kind} weights directory {ref!r} does not exist; {hint}")
        try:
            return cls.from_pretrained(str(p), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load {kind} weights from {ref!r} ({msg}); {hint}") from None
    try:
        return cls.from_pretrained(ref, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise UserError(f"{kind} weights {ref!r} not found locally and the hub is unreachable; {hint}")
    try:
        return cls.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {kind} weights {ref!r} ({msg}); {hint}") from None


def _processor_config(ref: str) -> dict:
    """The ``preprocessor_config.json`` of a local directory or a cached hub snapshot ({} when absent)."""
    p = Path(ref).expanduser()
    if p.is_dir():
        f = p / "preprocessor_config.json"
        return json.loads(f.read_text()) if f.is_file() else {}
    try:
        from transformers.utils import cached_file

        f = cached_file(ref, "preprocessor_config.json", local_files_only=True,
                        _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - any lookup failure means "no processor config"
        f = None
    if f and Path(f).is_file():
        return json.loads(Path(f).read_text())
    return {}


def _size_of(v, default: int) -> tuple[str, int]:
    """(mode, size) from a processor ``size`` / ``crop_size`` value: ``("shortest", s)`` or ``("exact", s)``."""
    if v is None:
        return "exact", default
    if isinstance(v, (int, float)):
        return "shortest", int(v)
    if isinstance(v, dict):
        if "shortest_edge" in v:
            return "shortest", int(v["shortest_edge"])
        if "height" in v:
            return "exact", int(v["height"])
    return "exact", default


class HFImageEncoder(Encoder):
    """A transformers vision model (CLIP / DINO ViT / DINOv2) as an image encoder (text too for CLIP)."""

    def __init__(self, kind: str, ref: str, device: str = "cpu", setting: str | None = None,
                 batch_size: int = 32, dtype: str = "float32"):
        import torch

        self.kind = kind
        self.ref = ref
        self.name = f"{kind}:{ref}"
        self.device = device
        self.batch_size = int(batch_size)
        self.setting = setting or f"{kind}.model"
        self.dtype = getattr(torch, dtype)
        self.tokenizer = None
        if kind == "clip":
            from transformers import CLIPModel

            self.model = _load_pretrained(CLIPModel, kind, ref, self.setting)
            vcfg = self.model.config.vision_config
            mean, std = CLIP_MEAN, CLIP_STD
            self.dim = int(self.model.config.projection_dim)
            self.supports_text = True
        elif kind == "dino":
            from transformers import ViTModel

            self.model = _load_pretrained(ViTModel, kind, ref, self.setting, add_pooling_layer=False)
            vcfg = self.model.config
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            self.dim = int(vcfg.hidden_size)
        elif kind == "dinov2":
            from transformers import AutoModel

            self.model = _load_pretrained(AutoModel, kind, ref, self.setting)
            if self.model.config.model_type not in ("dinov2", "dinov2_with_registers"):
                raise UserError(f"dinov2 weights {ref!r} are a {self.model.config.model_type!r} model, not DINOv2; "
                                f"set {self.setting}=DIR")
            vcfg = self.model.config
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            self.dim = int(vcfg.hidden_size)
        else:  # pragma: no cover - guarded by get_encoder
            raise UserError(f"unknown encoder kind {kind!r}")
        self.model.to(device=device, dtype=self.dtype).eval()
        self.model.requires_grad_(False)
        self.native_size = int(getattr(vcfg, "image_size", 224))
        pc = _processor_config(ref)
        self.image_mean = tuple(float(v) for v in pc.get("image_mean", mean))
        self.image_std = tuple(float(v) for v in pc.get("image_std", std))
        do_resize = pc.get("do_resize", True)
        mode, size = _size_of(pc.get("size"), self.native_size) if do_resize else ("exact", self.native_size)
        crop = _size_of(pc.get("crop_size"), size)[1] if pc.get("do_center_crop", bool(pc.get("crop_size"))) else None
        if mode == "shortest" and crop is None:
            crop = size
        self.resize_mode, self.resize_size, self.crop_size = mode, size, crop
        resample = int(pc.get("resample", 3))
        self.interp = {2: "bilinear", 3: "bicubic"}.get(resample, "bicubic")
        self._fingerprint: str | None = None

    # -- identity --------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            import torch

            h = hashlib.sha256()
            h.update(json.dumps({"encoder": self.kind, "v": ENCODER_VERSION, "class": type(self.model).__name__,
                                 "mean": self.image_mean, "std": self.image_std, "resize": self.resize_mode,
                                 "size": self.resize_size, "crop": self.crop_size, "interp": self.interp,
                                 "dtype": str(self.dtype)}, sort_keys=True).encode())
            h.update(self.model.config.to_json_string(use_diff=False).encode())
            for k, v in sorted(self.model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
            if self.tokenizer is not None or self.kind == "clip":
                tok = self._get_tokenizer(required=False)
                if tok is not None:
                    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # -- images ----------------------------------------------------------------------------------------------
    def preprocess(self, images):
        """``B×C×H×W`` in [-1, 1] → the model's ``pixel_values`` (RGB, resized, cropped, normalised)."""
        import torch
        import torch.nn.functional as F

        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"{self.kind} encoder needs 1- or 3-channel images, got {x.shape[1]}")
        h, w = x.shape[-2:]
        if self.resize_mode == "shortest":
            s = self.resize_size / min(h, w)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
        else:
            nh = nw = self.resize_size
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=self.interp, align_corners=False, antialias=True).clamp(0, 1)
        if self.crop_size is not None and (nh, nw) != (self.crop_size, self.crop_size):
            c = self.crop_size
            top, left = max(0, (nh - c) // 2), max(0, (nw - c) // 2)
            x = x[..., top : top + c, left : left + c]
            if x.shape[-2:] != (c, c):  # smaller than the crop: pad like the processors do
                x = F.pad(x, (0, c - x.shape[-1], 0, c - x.shape[-2]))
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (x - mean) / std

    def _embed_batch(self, images):
        pv = self.preprocess(images).to(device=self.device, dtype=self.dtype)
        interp = pv.shape[-1] != self.native_size
        if self.kind == "clip":
            out = self.model.get_image_features(pixel_values=pv, interpolate_pos_encoding=interp)
            return out if hasattr(out, "ndim") else out.pooler_output
        if self.kind == "dino":
            out = self.model(pixel_values=pv, interpolate_pos_encoding=interp)
        else:
            out = self.model(pixel_values=pv)
        return out.last_hidden_state[:, 0]

    # -- texts -----------------------------------------------------------------------------------------------
    def _get_tokenizer(self, required: bool = True):
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = _load_pretrained(AutoTokenizer, "clip tokenizer", self.ref, self.setting)
            except UserError:
                if required:
                    raise
                return None
        return self.tokenizer

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None):
        """Captions → ``len(texts)×D`` projected CLIP text features, rows L2-normalised (truncated to the model's
        context length)."""
        import torch
        import torch.nn.functional as F

        if self.kind != "clip":
            return super().embed_texts(texts, batch_size)
        tok = self._get_tokenizer()
        max_len = int(self.model.config.text_config.max_position_embeddings)
        bs = int(batch_size or 256)
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), bs):
                enc = tok(list(texts[s : s + bs]), padding=True, truncation=True, max_length=max_len,
                          return_tensors="pt")
                feats = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                                     attention_mask=enc["attention_mask"].to(self.device))
                feats = feats if hasattr(feats, "ndim") else feats.pooler_output
                out.append(F.normalize(feats.float().cpu(), dim=1, eps=1e-12))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)
